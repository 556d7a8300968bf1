"""Edges as separate OS processes: routing across edges, slow clients, SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable

import psutil
from tornado.httpclient import AsyncHTTPClient

from shared.messaging import ADDRESS_BROADCAST, Address, Envelope
from shared.messaging.broker import Publisher
from tests.support.client import Client
from tests.support.edge import EdgeProcess, spawn_edge  # noqa: F401  (a fixture)

SERVICE = Address.service("test")


def event(to: Address, **data: object) -> Envelope:
    return Envelope(type="test.event", to=to, sender=SERVICE, data=dict(data))


async def test_events_reach_users_on_whichever_edge_they_are(
    spawn_edge: Callable[..., object], publisher: Publisher, token_for: Callable[..., str]
) -> None:
    edge_a: EdgeProcess = await spawn_edge()  # type: ignore[misc]
    edge_b: EdgeProcess = await spawn_edge()  # type: ignore[misc]
    alice = await Client.connect(edge_a.port, token_for("alice", ("team",)))
    bob = await Client.connect(edge_b.port, token_for("bob", ("team",)))
    carol_a = await Client.connect(edge_a.port, token_for("carol"))
    carol_b = await Client.connect(edge_b.port, token_for("carol"))
    everyone = [alice, bob, carol_a, carol_b]

    to_bob = event(Address.user("bob"))
    await publisher.publish_event(to_bob)
    assert (await bob.recv())["id"] == to_bob.id

    to_carol = event(Address.user("carol"))
    await publisher.publish_event(to_carol)
    assert (await carol_a.recv())["id"] == to_carol.id
    assert (await carol_b.recv())["id"] == to_carol.id

    to_team = event(Address.group("team"))
    await publisher.publish_event(to_team)
    assert (await alice.recv())["id"] == to_team.id
    assert (await bob.recv())["id"] == to_team.id

    broadcast = event(ADDRESS_BROADCAST)
    await publisher.publish_event(broadcast)
    markers = {}
    for user in ("alice", "bob", "carol"):
        markers[user] = event(Address.user(user))
        await publisher.publish_event(markers[user])
    # Each socket sees the broadcast once, then its marker: no duplicate, no leak of
    # another user's traffic in between.
    for client, user in zip(everyone, ("alice", "bob", "carol", "carol")):
        assert (await client.recv())["id"] == broadcast.id
        assert (await client.recv())["id"] == markers[user].id


async def test_slow_client_is_closed_and_edge_memory_stays_bounded(
    spawn_edge: Callable[..., object], publisher: Publisher, token_for: Callable[..., str]
) -> None:
    limit = 256 * 1024
    edge: EdgeProcess = await spawn_edge(WARREN_EDGE_MAX_OUTBOUND_BYTES=str(limit))  # type: ignore[misc]
    process = psutil.Process(edge.pid)

    sluggish = socket.socket()
    sluggish.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sluggish.connect(("127.0.0.1", edge.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sluggish.sendall(
        (f"GET /ws?token={token_for('slow')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    )
    # It reads the 101 response, then never reads again.
    assert b"101" in sluggish.recv(4096)
    healthy = await Client.connect(edge.port, token_for("healthy"))

    rss_before = process.memory_info().rss
    closed = asyncio.create_task(edge.wait_log("slow client closed", timeout=60))
    payload = "x" * 60_000
    for n in range(1_500):  # ~90 MB offered to a client that reads nothing
        await publisher.publish_event(event(Address.user("slow"), n=n, pad=payload))
        if closed.done():
            break
    record = await closed
    assert record["user"] == "slow"
    growth = process.memory_info().rss - rss_before
    assert growth < 40 * 1024 * 1024, f"edge RSS grew by {growth / 1e6:.1f} MB"

    # The edge stays healthy for everyone else.
    marker = event(Address.user("healthy"))
    await publisher.publish_event(marker)
    assert (await healthy.recv())["id"] == marker.id
    metrics = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{edge.port}/metrics")).body
    assert b"warren_edge_slow_client_disconnects_total 1.0" in metrics
    sluggish.close()


async def test_sigterm_closes_sockets_with_1001_and_exits(
    spawn_edge: Callable[..., object], token_for: Callable[..., str]
) -> None:
    edge: EdgeProcess = await spawn_edge(WARREN_EDGE_SHUTDOWN_DEADLINE_S="5")  # type: ignore[misc]
    clients = [await Client.connect(edge.port, token_for(f"u{i}")) for i in range(3)]
    started = time.monotonic()
    exit_code = asyncio.create_task(edge.terminate(timeout=15))
    for client in clients:
        assert await client.closed() == (1001, "server shutting down")
    assert await exit_code == 0
    assert time.monotonic() - started < 10
    assert any(r.get("message") == "edge stopped" for r in edge.logs)
