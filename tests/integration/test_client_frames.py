"""Client frames over a real socket: message.send policy, commands, and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import pytest
from tornado.httpclient import AsyncHTTPClient

from shared.messaging import Command, decode
from shared.messaging.broker import connect, declare_work_queue
from services.ws_edge.server import EdgeServer
from tests.support.catalogue import declared, known
from tests.support.client import Client


async def test_direct_message_reaches_recipient_with_verified_from(
    edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    bob = await Client.connect(edge.port, token_for("bob"))
    reply = await alice.request(
        {"type": "message.send", "ref": "r1", "to": "user:bob", "from": "user:mallory",
         "data": {"text": "hi"}}
    )
    assert reply["type"] == "ack" and reply["ref"] == "r1"
    got = await bob.recv()
    assert got["id"] == reply["data"]["id"]
    assert (got["type"], got["from"], got["to"], got["data"]) == (
        "message", "user:alice", "user:bob", {"text": "hi"}
    )


async def test_group_message_needs_membership(edge: EdgeServer, token_for: Callable[..., str]) -> None:
    member = await Client.connect(edge.port, token_for("alice", ("team",)))
    other = await Client.connect(edge.port, token_for("bob", ("team",)))
    outsider = await Client.connect(edge.port, token_for("eve", ("elsewhere",)))

    refused = await outsider.request({"type": "message.send", "ref": 1, "to": "group:team", "data": {}})
    assert refused["type"] == "error"
    assert refused["data"]["code"] == "forbidden"

    accepted = await member.request({"type": "message.send", "ref": 2, "to": "group:team", "data": {"n": 1}})
    assert accepted["type"] == "ack"
    # The sender is a member too, so it sees its own group message.
    assert (await member.recv())["id"] == accepted["data"]["id"]
    assert (await other.recv())["id"] == accepted["data"]["id"]


async def test_broadcast_needs_admin_role(edge: EdgeServer, token_for: Callable[..., str]) -> None:
    admin = await Client.connect(edge.port, token_for("root", (), ("admin",)))
    user = await Client.connect(edge.port, token_for("bob"))
    refused = await user.request({"type": "message.send", "ref": 1, "to": "broadcast", "data": {}})
    assert refused["data"]["code"] == "forbidden"
    accepted = await admin.request({"type": "message.send", "ref": 2, "to": "broadcast", "data": {}})
    assert accepted["type"] == "ack"
    assert (await user.recv())["id"] == accepted["data"]["id"]
    assert (await admin.recv())["id"] == accepted["data"]["id"]


async def test_policy_is_configurable(make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]) -> None:
    edge = make_edge(
        WARREN_POLICY_DIRECT="none", WARREN_POLICY_GROUP="any", WARREN_POLICY_BROADCAST_ROLE="ops"
    )
    await edge.start()
    client = await Client.connect(edge.port, token_for("alice", (), ("ops",)))
    direct = await client.request({"type": "message.send", "ref": 1, "to": "user:bob", "data": {}})
    assert direct["data"]["code"] == "forbidden"
    group = await client.request({"type": "message.send", "ref": 2, "to": "group:strangers", "data": {}})
    assert group["type"] == "ack"
    broadcast = await client.request({"type": "message.send", "ref": 3, "to": "broadcast", "data": {}})
    assert broadcast["type"] == "ack"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"type": "no.such.type", "ref": 7}', "unknown_type"),
        ('{"type": "message.send", "ref": 7, "to": "user:a.b", "data": {}}', "invalid_address"),
        ('{"type": "message.send", "ref": 7, "to": "user:*", "data": {}}', "invalid_address"),
        ('{"type": "message.send", "ref": 7, "to": "group:#", "data": {}}', "invalid_address"),
        ('{"type": "message.send", "ref": 7, "to": "service:cat", "data": {}}', "invalid_address"),
        ('{"type": "message.send", "ref": 7, "to": "user:bob", "data": [1]}', "invalid_frame"),
    ],
)
async def test_bad_frames_get_error_frames_and_the_socket_stays_open(
    edge: EdgeServer, token_for: Callable[..., str], frame: str, code: str
) -> None:
    client = await Client.connect(edge.port, token_for("alice"))
    await client.send(frame)
    error = await client.recv()
    assert error["type"] == "error"
    assert error["data"]["code"] == code
    assert error["data"]["message"]
    if '"ref": 7' in frame:
        assert error["ref"] == 7
    assert (await client.request({"type": "message.send", "ref": "ok", "to": "user:alice", "data": {}}))["type"] == "ack"


async def test_binary_frame_is_refused(edge: EdgeServer, token_for: Callable[..., str]) -> None:
    client = await Client.connect(edge.port, token_for("alice"))
    await client.send(b"\x00\x01")
    assert (await client.recv())["data"]["code"] == "binary_frame"


async def test_oversized_frame_closes_with_1009(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_EDGE_MAX_FRAME_BYTES="4096")
    await edge.start()
    client = await Client.connect(edge.port, token_for("alice"))
    await client.send({"type": "message.send", "to": "user:bob", "data": {"pad": "x" * 5000}})
    code, _reason = await client.closed()
    assert code == 1009


async def test_repeated_invalid_frames_close_with_4029(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_EDGE_INVALID_FRAME_LIMIT="5")
    await edge.start()
    client = await Client.connect(edge.port, token_for("alice"))
    for _ in range(5):
        await client.send("nope")
    code, reason = await client.closed()
    assert code == 4029
    assert reason == "too many invalid frames"


async def test_command_is_published_with_from_set_by_the_edge(
    edge: EdgeServer, amqp_url: str, token_for: Callable[..., str]
) -> None:
    connection = await connect(amqp_url, name="test-run-service")
    async with connection:
        channel = await connection.channel()
        queue = await declare_work_queue(channel, Command.RUN_START)
        client = await Client.connect(edge.port, token_for("alice"))
        async with declared(amqp_url, Command.RUN_START):
            await known(edge, Command.RUN_START)
            ack = await client.request(
                {"type": "run.start", "ref": "c1", "from": "user:admin",
                 "data": {"job": "countdown"}}
            )
        assert ack["type"] == "ack"

        received: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = (
            asyncio.get_running_loop().create_future()
        )

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            if not received.done():
                received.set_result(message)

        await queue.consume(on_message)
        message = await asyncio.wait_for(received, 10)
        envelope = decode(message.body)
        assert envelope.id == ack["data"]["id"] == message.message_id
        assert (envelope.type, str(envelope.sender), str(envelope.to)) == (
            "run.start", "user:alice", "user:alice"
        )
        assert envelope.data == {"job": "countdown"}
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_command_without_a_service_gets_no_service(
    edge: EdgeServer, amqp_url: str, token_for: Callable[..., str]
) -> None:
    client = await Client.connect(edge.port, token_for("alice"))
    async with declared(amqp_url, "orders.create"):  # declared, but nothing consumes it
        await known(edge, "orders.create")
        error = await client.request({"type": "orders.create", "ref": 1, "data": {}})
    assert error["data"]["code"] == "no_service"


async def test_metrics_count_accepted_and_refused_frames(
    edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    client = await Client.connect(edge.port, token_for("alice"))
    await client.request({"type": "message.send", "ref": 1, "to": "user:alice", "data": {}})
    await client.send("{bad")
    await client.recv()  # the delivered message or the error, in order
    await client.recv()
    body = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{edge.port}/metrics")).body.decode()
    assert 'warren_edge_frames_accepted_total{type="message.send"} 1.0' in body
    assert 'warren_edge_frames_refused_total{reason="invalid_json"} 1.0' in body
    assert "warren_edge_connections 1.0" in body
    assert 'warren_edge_events_delivered_total{kind="user"} 1.0' in body
    assert "warren_edge_delivery_latency_seconds_count 1.0" in body
    assert "warren_edge_bindings 2.0" in body
