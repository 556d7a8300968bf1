"""The catalogue's pure parts: announcements checked, the view's merge and expiry, and the
operator's per-type roles."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from shared.auth import Identity
from shared.catalogue import CatalogueView, CommandType, Offer, parse_announcement
from shared.catalogue.model import CatalogueError
from shared.config import ConfigError
from shared.messaging import Address, Envelope, encode
from shared.messaging.names import ADDRESS_BROADCAST, CatalogueKey
from services.ws_edge.command_gate import EDGE_OFFER, CommandGate, CommandRoles
from services.ws_edge.policy import PolicyDenied


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def envelope(kind: str = "catalogue.announce", sender: str = "orders", **data: Any) -> Envelope:
    return Envelope(type=kind, to=ADDRESS_BROADCAST, sender=Address.service(sender), data=data)


def announce(instance: str, ttl: float = 30, sender: str = "orders", **data: Any) -> bytes:
    return encode(envelope(sender=sender, instance=instance, ttl=ttl, **data))


def command(kind: str, roles: list[str] | None = None) -> dict[str, Any]:
    return {"type": kind, "roles": roles, "description": ""}


def user(*roles: str) -> Identity:
    return Identity(user_id="u", groups=(), roles=roles, expires_at=0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def view(clock: Clock) -> CatalogueView:
    return CatalogueView(CollectorRegistry(), service="edge", local=EDGE_OFFER, clock=clock)


# --- announcements --------------------------------------------------------------------


def test_an_announcement_round_trips() -> None:
    offer = Offer(
        commands=(CommandType("orders.create", frozenset({"ops"}), "make one"),),
        jobs=({"name": "count", "description": "", "args": {}, "roles": None},),
    )
    parsed = parse_announcement(envelope(instance="i-1", ttl=5, **offer.to_data()))
    assert (parsed.service, parsed.instance, parsed.ttl_s) == ("orders", "i-1", 5.0)
    assert parsed.offer == offer and parsed.refused == ()


@pytest.mark.parametrize(
    "data",
    [
        {"ttl": 30},
        {"instance": "", "ttl": 30},
        {"instance": 7, "ttl": 30},
        {"instance": "i", "ttl": "30"},
        {"instance": "i", "ttl": True},
        {"instance": "i", "ttl": 0.1},
        {"instance": "i", "ttl": 10_000},
        {"instance": "i", "ttl": 30, "commands": {"a.b": {}}},
        {"instance": "i", "ttl": 30, "jobs": [{}] * 257},
    ],
)
def test_an_announcement_wrong_as_a_whole_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(CatalogueError):
        parse_announcement(envelope(**data))


def test_an_announcement_from_a_user_is_refused() -> None:
    forged = Envelope(type="catalogue.announce", to=ADDRESS_BROADCAST,
                      sender=Address.user("mallory"), data={"instance": "i", "ttl": 30})
    with pytest.raises(CatalogueError, match="from a service"):
        parse_announcement(forged)


@pytest.mark.parametrize(
    ("key", "entry"),
    [
        ("commands", {"type": "Orders"}),
        ("commands", {"type": "orders.#"}),
        ("commands", {"type": "orders.create", "roles": "ops"}),
        ("commands", {"type": "orders.create", "roles": ["a b"]}),
        ("commands", {"type": "orders.create", "description": 5}),
        ("commands", "orders.create"),
        ("jobs", {"name": "a/b", "args": {}}),
        ("jobs", {"name": "j", "args": []}),
        ("jobs", {"name": "j", "args": {"x": {"kind": "complex"}}}),
        ("jobs", {"name": "j", "args": {"bad name": {"kind": "int"}}}),
        ("jobs", {"name": "j", "args": {"x": {"kind": "int", "minimum": "1"}}}),
        ("jobs", {"name": "j", "args": {"x": {"kind": "str", "choices": [1]}}}),
        ("jobs", {"name": "j", "args": {"x": {"kind": "str", "max_length": -1}}}),
        ("reports", {"name": "r", "params": {"x": {"kind": "int", "help": "h" * 501}}}),
        ("reports", {"name": "r", "params": {}, "roles": [None]}),
    ],
)
def test_an_invalid_entry_is_left_out_and_the_rest_kept(key: str, entry: Any) -> None:
    good = {
        "commands": command("orders.list"),
        "jobs": {"name": "fine", "args": {}},
        "reports": {"name": "fine", "params": {}},
    }[key]
    data: dict[str, Any] = {"instance": "i", "ttl": 30, key: [entry, good]}
    parsed = parse_announcement(envelope(**data))
    kept = {"commands": parsed.offer.commands, "jobs": parsed.offer.jobs,
            "reports": parsed.offer.reports}[key]
    assert len(kept) == 1 and len(parsed.refused) == 1
    assert parsed.refused[0].kind == key[:-1]


def test_an_entry_announced_twice_is_refused_once() -> None:
    parsed = parse_announcement(envelope(
        instance="i", ttl=30, commands=[command("a.b"), command("a.b", ["ops"])]
    ))
    assert [c.type for c in parsed.offer.commands] == ["a.b"]
    assert "twice" in parsed.refused[0].reason


@settings(database=None, max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=4),
    max_leaves=20,
))
def test_the_view_takes_any_body_without_raising(data: Any) -> None:
    view = CatalogueView(CollectorRegistry(), service="edge")
    body = orjson.dumps({"v": 1, "id": "x", "ts": 1, "type": "catalogue.announce",
                         "to": "broadcast", "from": "service:s",
                         "data": data if isinstance(data, dict) else {"commands": data}})
    view.receive(body)
    view.receive(orjson.dumps(data))
    assert isinstance(view.types(), frozenset)


# --- the view -------------------------------------------------------------------------


def test_the_edges_own_types_are_always_known(view: CatalogueView) -> None:
    assert view.types() == {"message.send", "auth.refresh", "history"}


def test_an_instance_is_offered_until_its_ttl_runs_out(view: CatalogueView, clock: Clock) -> None:
    view.receive(announce("i-1", ttl=10, commands=[command("orders.create")]))
    assert "orders.create" in view.types()
    clock.now += 9.9
    assert "orders.create" in view.types()
    view.receive(announce("i-1", ttl=10, commands=[command("orders.create")]))  # a heartbeat
    clock.now += 9.9
    assert "orders.create" in view.types()
    clock.now += 0.2
    assert "orders.create" not in view.types()
    assert view.instances._value.get() == 0


def test_a_withdrawal_removes_only_its_own_instance(view: CatalogueView) -> None:
    view.receive(announce("i-1", commands=[command("orders.create")]))
    view.receive(announce("i-2", commands=[command("orders.create")]))
    view.receive(encode(envelope("catalogue.withdraw", sender="other", instance="i-1")))
    view.receive(encode(envelope("catalogue.withdraw", instance="i-1")))
    assert "orders.create" in view.types()
    view.receive(encode(envelope("catalogue.withdraw", instance="i-2")))
    assert "orders.create" not in view.types()


def test_a_new_announcement_replaces_the_instances_offer(view: CatalogueView) -> None:
    view.receive(announce("i-1", commands=[command("orders.create")]))
    view.receive(announce("i-1", commands=[command("orders.cancel")]))
    assert view.types() >= {"orders.cancel"} and "orders.create" not in view.types()


def test_a_type_is_open_only_if_every_declaration_says_so(view: CatalogueView) -> None:
    view.receive(announce("i-1", commands=[command("a.b")]))
    assert view.command("a.b") == CommandType("a.b")
    view.receive(announce("i-2", commands=[command("a.b", ["ops"])]))
    view.receive(announce("i-3", sender="more", commands=[command("a.b", ["sales"])]))
    merged = view.command("a.b")
    assert merged is not None and merged.roles == frozenset({"ops", "sales"})


def test_the_listing_names_services_and_keeps_the_newest_description(
    view: CatalogueView, clock: Clock
) -> None:
    view.receive(announce("i-1", commands=[command("run.start")],
                          jobs=[{"name": "count", "description": "old", "args": {}}]))
    clock.now += 1
    view.receive(announce("i-2", sender="runner", commands=[command("run.start")],
                          jobs=[{"name": "count", "description": "new", "args": {}}]))
    listing = view.listing()
    assert [(c.type, s) for c, s in listing.commands] == [
        ("auth.refresh", ("edge",)), ("history", ("edge",)), ("message.send", ("edge",)),
        ("run.start", ("orders", "runner")),
    ]
    assert listing.jobs == ({"name": "count", "description": "new", "args": {}, "roles": None,
                             "service": "runner"},)
    assert view.job("count") == listing.jobs[0] and view.job("nope") is None


# --- the gate -------------------------------------------------------------------------


def test_command_roles_parse() -> None:
    roles = CommandRoles.parse(" orders.create = ops|admin , run.start=*,")
    assert roles.overrides == {"orders.create": frozenset({"ops", "admin"}), "run.start": None}
    assert CommandRoles.parse("").overrides == {}


@pytest.mark.parametrize(
    "text", ["orders.create", "orders.create=", "Orders=ops", "a.b=ops|", "a.b=o p",
             "a.b=ops,a.b=*", "=ops"],
)
def test_command_roles_refuse_bad_syntax(text: str) -> None:
    with pytest.raises(ConfigError, match="WARREN_EDGE_COMMAND_ROLES"):
        CommandRoles.parse(text)


def test_the_gate_applies_declared_roles_overrides_and_the_admin_role(
    view: CatalogueView
) -> None:
    view.receive(announce("i-1", commands=[command("a.open"), command("a.ops", ["ops"]),
                                           command("a.opened", ["ops"])]))
    gate = CommandGate(view, CommandRoles.parse("a.opened=*,a.open=sales"), "admin")
    assert gate.may_send(user("ops"), "a.ops") and not gate.may_send(user(), "a.ops")
    assert gate.may_send(user(), "a.opened")
    assert not gate.may_send(user(), "a.open") and gate.may_send(user("sales"), "a.open")
    assert gate.may_send(user("admin"), "a.ops") and gate.may_send(user("admin"), "a.open")
    assert not gate.may_send(user("admin"), "a.undeclared")
    with pytest.raises(PolicyDenied):
        gate.check(user(), "a.ops")
    seen = gate.catalogue_for(user())
    assert [c["type"] for c in seen["commands"]] == ["a.opened", "auth.refresh", "history", "message.send"]
    assert seen["commands"][0]["roles"] is None  # as the operator set it


def test_a_refusal_is_counted_every_time(view: CatalogueView) -> None:
    bad = announce("i-1", commands=[command("Bad")])
    view.receive(bad)
    view.receive(bad)
    view.receive(b"not json")
    assert view.refused.labels("entry")._value.get() == 2
    assert view.refused.labels("message")._value.get() == 1


def test_a_message_of_another_type_is_dropped(view: CatalogueView) -> None:
    view.receive(encode(envelope(CatalogueKey.QUERY.value)))
    assert view.refused.labels("message")._value.get() == 1
