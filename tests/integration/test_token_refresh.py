"""``auth.refresh`` over a real socket (docs/protocol.md 6.7): a connection takes a new
token of the same user without dropping, its keys follow the new token's groups before
the ack, and a refused refresh changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from shared.messaging import Address, Envelope, group_key
from shared.messaging.broker import Publisher
from services.ws_edge.bindings import BindingTable
from services.ws_edge.server import EdgeServer
from tests.support.client import Client


def bindings(edge: EdgeServer) -> BindingTable:
    assert edge.deps is not None
    return edge.deps.bindings


def exp_of(token: str) -> int:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert isinstance(exp, int)
    return exp


def refresh(token: str, ref: object = "refresh") -> dict[str, Any]:
    return {"type": "auth.refresh", "ref": ref, "data": {"token": token}}


def event(to: Address, n: int) -> Envelope:
    return Envelope(type="tick", to=to, sender=Address.service("test"), data={"n": n})


async def next_event(client: Client) -> dict[str, Any]:
    frame = await client.recv()
    assert "v" in frame, frame  # an event, not a reply
    return frame


async def test_a_refresh_keeps_the_socket_past_the_old_exp_and_loses_no_event(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher
) -> None:
    first = token_for("alice", ttl_s=3)
    alice = await Client.connect(edge.port, first)
    renewed = token_for("alice", ttl_s=600)
    me = Address.user("alice")
    sent = 0
    ack: dict[str, Any] | None = None
    # Events keep coming before, during and after the refresh, until the first token's
    # exp has passed (when the edge would have closed the socket without the refresh).
    while time.time() < exp_of(first) + 1:
        await publisher.publish_event(event(me, sent))
        sent += 1
        if ack is None and sent == 5:
            await alice.send(refresh(renewed))  # in flight while events arrive
        while True:
            frame = await alice.recv()
            if frame.get("type") == "ack":
                ack = frame
                continue
            assert frame["data"]["n"] == sent - 1, frame  # every event, in order
            break
    assert ack is not None and ack["ref"] == "refresh"
    assert ack["data"] == {"exp": exp_of(renewed), "groups": [], "roles": []}
    reply = await alice.request({"type": "message.send", "ref": 1, "to": "user:alice", "data": {}})
    assert reply["type"] == "ack"
    assert edge.metrics.closed.labels("4001")._value.get() == 0


async def test_the_4001_close_follows_the_new_exp(
    edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice", ttl_s=600))
    reply = await alice.request(refresh(token_for("alice", ttl_s=1)))
    assert reply["type"] == "ack"
    assert await alice.closed() == (4001, "token expired")


async def test_a_refresh_with_fewer_groups_stops_the_dropped_one_before_the_ack(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher
) -> None:
    alice = await Client.connect(edge.port, token_for("alice", ("kept", "dropped")))
    bob = await Client.connect(edge.port, token_for("bob", ("dropped",)))
    reply = await alice.request(refresh(token_for("alice", ("kept",))))
    assert reply["type"] == "ack" and reply["data"]["groups"] == ["kept"]
    # Only bob holds the dropped group's key now.
    assert bindings(edge).holders(group_key("dropped")) == 1
    await publisher.publish_event(event(Address.group("dropped"), 1))
    await publisher.publish_event(event(Address.group("kept"), 2))
    assert (await next_event(bob))["to"] == "group:dropped"  # it was delivered, to bob
    assert (await next_event(alice))["to"] == "group:kept"  # alice's next is the kept one
    refused = await alice.request(
        {"type": "message.send", "ref": 2, "to": "group:dropped", "data": {}}
    )
    assert refused["data"]["code"] == "forbidden"  # the policy reads the new groups too


async def test_a_refresh_with_more_groups_delivers_the_new_one_from_the_ack(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    reply = await alice.request(refresh(token_for("alice", ("new",), ("ops",))))
    assert reply["type"] == "ack"
    assert (reply["data"]["groups"], reply["data"]["roles"]) == (["new"], ["ops"])
    assert group_key("new") in bindings(edge).bound
    await publisher.publish_event(event(Address.group("new"), 1))
    assert (await next_event(alice))["to"] == "group:new"


async def test_refreshes_in_flight_are_handled_in_order(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    await alice.send(refresh(token_for("alice", ("x",)), ref=1))
    await alice.send(refresh(token_for("alice", ("y",)), ref=2))
    first, second = await alice.recv(), await alice.recv()
    assert (first["ref"], first["data"]["groups"]) == (1, ["x"])
    assert (second["ref"], second["data"]["groups"]) == (2, ["y"])
    assert bindings(edge).holders(group_key("x")) == 0
    await publisher.publish_event(event(Address.group("x"), 1))
    await publisher.publish_event(event(Address.group("y"), 2))
    assert (await next_event(alice))["to"] == "group:y"


async def test_a_refresh_for_another_user_is_forbidden_and_changes_nothing(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    reply = await alice.request(refresh(token_for("bob", ("bobs",), ("admin",))))
    assert reply["type"] == "error"
    assert reply["data"] == {"code": "forbidden",
                             "message": "a refresh must be for the same user; open a new socket "
                                        "for another"}
    assert bindings(edge).holders(group_key("bobs")) == 0
    await publisher.publish_event(event(Address.user("bob"), 1))
    await publisher.publish_event(event(Address.user("alice"), 2))
    assert (await next_event(alice))["to"] == "user:alice"
    broadcast = await alice.request({"type": "message.send", "ref": 3, "to": "broadcast", "data": {}})
    assert broadcast["data"]["code"] == "forbidden"  # bob's admin role did not stick


# name -> (the frame's data, made with token_for; the error the edge answers)
REFUSED: dict[str, tuple[Callable[[Callable[..., str]], object], str]] = {
    "garbage": (lambda issue: {"token": "not.a.token"}, "token_invalid"),
    "expired": (
        lambda issue: {"token": issue("alice", ("team",), now=int(time.time()) - 120, ttl_s=60)},
        "token_expired",
    ),
    "no_token": (lambda issue: {}, "invalid_frame"),
    "token_not_a_string": (lambda issue: {"token": 5}, "invalid_frame"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_refused_refresh_keeps_the_old_token_and_its_exp(
    edge: EdgeServer, token_for: Callable[..., str], case: str
) -> None:
    alice = await Client.connect(edge.port, token_for("alice", ("team",), ttl_s=3))
    make, code = REFUSED[case]
    reply = await alice.request({"type": "auth.refresh", "ref": 1, "data": make(token_for)})
    assert reply["type"] == "error" and reply["data"]["code"] == code
    assert bindings(edge).holders(group_key("team")) == 1
    assert await alice.closed() == (4001, "token expired")

