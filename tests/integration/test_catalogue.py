"""The catalogue on a real broker with real edges: declared command types are accepted
and routed, withdrawn or expired ones are not, roles decide who may send what and see
what, and nothing that arrives on the catalogue exchange hurts the edge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared.catalogue import CommandType
from shared.messaging import Address, Envelope, decode, encode
from shared.messaging.broker import connect, declare_work_queue
from shared.messaging.names import ADDRESS_BROADCAST, CATALOGUE_EXCHANGE, CatalogueKey
from services.ws_edge.server import EdgeServer
from tests.support.catalogue import declared, forgotten, known
from tests.support.client import Client
from tests.support.excel import http

JOB_ARGS = {"n": {"kind": "int", "help": "how many", "default": 3, "minimum": 1, "maximum": 9}}


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(amqp_url, name="warren-test-catalogue")
    async with connection:
        yield connection


async def consume_one(
    connection: AbstractRobustConnection, command: str
) -> asyncio.Future[AbstractIncomingMessage]:
    """Declare ``command``'s work queue and consume it; the future gets the first message."""
    channel = await connection.channel()
    queue = await declare_work_queue(channel, command)
    got: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        if not got.done():
            got.set_result(message)

    await queue.consume(on_message)
    return got


async def publish_raw(connection: AbstractRobustConnection, body: bytes, key: str) -> None:
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        CATALOGUE_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await exchange.publish(aio_pika.Message(body), routing_key=key)
    await channel.close()


def announcement(instance: str, ttl: float, **data: Any) -> bytes:
    envelope = Envelope(
        type=CatalogueKey.ANNOUNCE.value, to=ADDRESS_BROADCAST,
        sender=Address.service("orders"), data={"instance": instance, "ttl": ttl, **data},
    )
    return encode(envelope)


async def test_a_declared_type_is_accepted_and_routed_to_its_service(
    edge: EdgeServer, amqp_url: str, broker: AbstractRobustConnection,
    token_for: Callable[..., str],
) -> None:
    client = await Client.connect(edge.port, token_for("alice"))
    before = await client.request({"type": "orders.create", "ref": 1, "data": {"n": 1}})
    assert before["data"]["code"] == "unknown_type"

    got = await consume_one(broker, "orders.create")
    async with declared(amqp_url, "orders.create", service="orders"):
        await known(edge, "orders.create")
        ack = await client.request(
            {"type": "orders.create", "ref": 2, "from": "user:mallory", "data": {"n": 2}}
        )
        assert ack["type"] == "ack", ack
        message = await asyncio.wait_for(got, 10)
    envelope = decode(message.body)
    assert envelope.id == ack["data"]["id"]
    assert (envelope.type, str(envelope.sender), envelope.data) == (
        "orders.create", "user:alice", {"n": 2}
    )


async def test_a_withdrawn_type_is_unknown_again(
    edge: EdgeServer, amqp_url: str, broker: AbstractRobustConnection,
    token_for: Callable[..., str],
) -> None:
    await consume_one(broker, "orders.create")
    client = await Client.connect(edge.port, token_for("alice"))
    async with declared(amqp_url, "orders.create", service="orders"):
        await known(edge, "orders.create")
        assert (await client.request({"type": "orders.create", "ref": 1}))["type"] == "ack"
    await forgotten(edge, "orders.create")
    refused = await client.request({"type": "orders.create", "ref": 2})
    assert refused["data"]["code"] == "unknown_type"


async def test_a_type_whose_service_stopped_announcing_expires_after_its_ttl(
    edge: EdgeServer, broker: AbstractRobustConnection, token_for: Callable[..., str],
) -> None:
    # One announcement and nothing more, as from an instance killed without withdrawing.
    await consume_one(broker, "orders.create")
    commands = [{"type": "orders.create", "roles": None, "description": ""}]
    await publish_raw(broker, announcement("orders-killed", 1.0, commands=commands),
                      CatalogueKey.ANNOUNCE.value)
    await known(edge, "orders.create")
    client = await Client.connect(edge.port, token_for("alice"))
    await forgotten(edge, "orders.create")
    refused = await client.request({"type": "orders.create", "ref": 1})
    assert refused["data"]["code"] == "unknown_type"


async def test_a_declared_type_without_a_consumer_gets_no_service(
    edge: EdgeServer, amqp_url: str, token_for: Callable[..., str]
) -> None:
    client = await Client.connect(edge.port, token_for("alice"))
    async with declared(amqp_url, "orders.create", service="orders"):
        await known(edge, "orders.create")
        refused = await client.request({"type": "orders.create", "ref": 1})
    assert refused["data"]["code"] == "no_service"


async def test_an_edge_started_after_the_service_knows_its_types_at_once(
    make_edge: Callable[..., EdgeServer], amqp_url: str
) -> None:
    async with declared(amqp_url, "orders.create", service="orders"):
        edge = make_edge()
        await edge.start()
        assert edge.deps is not None
        assert "orders.create" in edge.deps.commands.known()


async def test_roles_decide_who_may_send_a_type(
    edge: EdgeServer, amqp_url: str, broker: AbstractRobustConnection,
    token_for: Callable[..., str],
) -> None:
    await consume_one(broker, "orders.create")
    user = await Client.connect(edge.port, token_for("alice"))
    ops = await Client.connect(edge.port, token_for("olga", (), ("ops",)))
    admin = await Client.connect(edge.port, token_for("root", (), ("admin",)))
    ops_only = CommandType("orders.create", frozenset({"ops"}))
    async with declared(amqp_url, ops_only, service="orders"):
        await known(edge, "orders.create")
        refused = await user.request({"type": "orders.create", "ref": 1})
        assert (refused["type"], refused["data"]["code"]) == ("error", "forbidden")
        assert (await ops.request({"type": "orders.create", "ref": 2}))["type"] == "ack"
        assert (await admin.request({"type": "orders.create", "ref": 3}))["type"] == "ack"
        # A refused command is a strike like any refused frame, but the socket goes on.
        assert (await user.request(
            {"type": "message.send", "ref": 4, "to": "user:alice", "data": {}}
        ))["type"] == "ack"


async def test_the_operator_overrides_a_types_roles(
    make_edge: Callable[..., EdgeServer], amqp_url: str, broker: AbstractRobustConnection,
    token_for: Callable[..., str],
) -> None:
    await consume_one(broker, "orders.create")
    await consume_one(broker, "orders.cancel")
    edge = make_edge(WARREN_EDGE_COMMAND_ROLES="orders.create=*, orders.cancel=ops|sales")
    await edge.start()
    user = await Client.connect(edge.port, token_for("alice"))
    sales = await Client.connect(edge.port, token_for("sam", (), ("sales",)))
    restricted = CommandType("orders.create", frozenset({"ops"}))
    async with declared(amqp_url, restricted, "orders.cancel", service="orders"):
        await known(edge, "orders.create", "orders.cancel")
        assert (await user.request({"type": "orders.create", "ref": 1}))["type"] == "ack"
        refused = await user.request({"type": "orders.cancel", "ref": 2})
        assert refused["data"]["code"] == "forbidden"
        assert (await sales.request({"type": "orders.cancel", "ref": 3}))["type"] == "ack"


async def test_get_api_catalogue_shows_what_the_caller_may_use(
    edge: EdgeServer, amqp_url: str, token_for: Callable[..., str]
) -> None:
    jobs = (
        {"name": "count", "description": "counts", "args": JOB_ARGS, "roles": None},
        {"name": "purge", "description": "purges", "args": {}, "roles": ["ops"]},
    )
    reports: tuple[dict[str, Any], ...] = (
        {"name": "orders", "description": "all orders", "params": {}, "roles": None},
    )
    async with (
        declared(amqp_url, "run.start", CommandType("orders.purge", frozenset({"ops"})),
                 service="jobs", jobs=jobs),
        declared(amqp_url, CommandType("excel.create", frozenset({"sales"})),
                 service="reports", reports=reports),
    ):
        await known(edge, "run.start", "orders.purge", "excel.create")

        status, _, seen = await http(edge.port, "/api/catalogue", token=token_for("alice"))
        assert status == 200
        assert [c["type"] for c in seen["commands"]] == [
            "auth.refresh", "history", "message.send", "run.start"
        ]
        run_start = seen["commands"][3]
        assert run_start == {"type": "run.start", "roles": None, "description": "",
                             "services": ["jobs"]}
        assert [j["name"] for j in seen["jobs"]] == ["count"]
        assert seen["jobs"][0]["args"] == JOB_ARGS and seen["jobs"][0]["service"] == "jobs"
        assert seen["reports"] == []  # excel.create needs sales

        _, _, ops = await http(edge.port, "/api/catalogue", token=token_for("olga", (), ("ops",)))
        assert {c["type"] for c in ops["commands"]} >= {"orders.purge", "run.start"}
        assert [j["name"] for j in ops["jobs"]] == ["count", "purge"]

        _, _, admin = await http(edge.port, "/api/catalogue",
                                 token=token_for("root", (), ("admin",)))
        assert [c["type"] for c in admin["commands"]] == [
            "auth.refresh", "excel.create", "history", "message.send", "orders.purge", "run.start"
        ]
        assert [r["name"] for r in admin["reports"]] == ["orders"]

        # The console's forms read the same, without the command types.
        _, _, console = await http(edge.port, "/api/console/catalog", token=token_for("alice"))
        assert console == {"jobs": seen["jobs"], "reports": []}

    status, _, anonymous = await http(edge.port, "/api/catalogue")
    assert (status, anonymous["error"]) == (401, "token_missing")


async def test_garbage_on_the_catalogue_exchange_is_dropped_and_bad_entries_refused(
    edge: EdgeServer, broker: AbstractRobustConnection, token_for: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert edge.deps is not None
    view = edge.deps.commands.view
    good = {"type": "orders.create", "roles": None, "description": ""}
    bad_entries = announcement(
        "orders-1", 30,
        commands=[{"type": "Not A Type"}, good, {"type": "orders.x", "roles": ["no role!"]}],
        jobs=[{"name": "weird", "args": {"n": {"kind": "complex", "help": ""}}},
              {"name": "fine", "description": "", "args": {}}],
        reports=[{"name": "../etc", "params": {}}],
    )
    garbage = [
        b"\xff\x00 not json",
        b"[1, 2, 3]",
        orjson.dumps({"v": 1, "type": "catalogue.announce"}),
        announcement("orders-2", float("nan"), commands=[good]).replace(b"NaN", b"null"),
        announcement("orders-3", 1e9, commands=[good]),
        announcement("orders-4", 30, commands={"orders.y": {}}),
        encode(Envelope(type="catalogue.announce", to=ADDRESS_BROADCAST,
                        sender=Address.user("mallory"),
                        data={"instance": "x", "ttl": 30, "commands": [good]})),
        b"{}" * 600_000,
    ]
    with caplog.at_level(logging.WARNING, logger="shared.catalogue.view"):
        for body in garbage:
            await publish_raw(broker, body, CatalogueKey.ANNOUNCE.value)
        await publish_raw(broker, b"nonsense", CatalogueKey.WITHDRAW.value)
        for _ in range(2):  # the same refusals again: counted, logged once
            await publish_raw(broker, bad_entries, CatalogueKey.ANNOUNCE.value)
        await view.wait_until(
            lambda v: v.refused.labels("entry")._value.get() >= 8, 10
        )
    assert view.refused.labels("message")._value.get() == len(garbage) + 1
    assert view.types() >= {"orders.create"}
    assert "orders.x" not in view.types()
    listing = view.listing()
    assert [j["name"] for j in listing.jobs] == ["fine"] and listing.reports == ()
    refusals = [r for r in caplog.records if r.getMessage() == "catalogue entry refused"]
    assert len(refusals) == 4, [r.__dict__.get("entry") for r in refusals]

    # The edge goes on: a client can still send.
    client = await Client.connect(edge.port, token_for("alice"))
    reply = await client.request({"type": "message.send", "ref": 1, "to": "user:alice", "data": {}})
    assert reply["type"] == "ack"
