"""The edge consumer's batching and acknowledgements, driven with fake deliveries.

The broker side (queue, bindings, dead-lettering) is covered on a real broker in
tests/integration/test_routing.py; here only the pure logic on top of it.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import CollectorRegistry

from shared.messaging import Address, Envelope, encode, user_key
from services.ws_edge.consumer import EventConsumer
from services.ws_edge.hub import Hub
from services.ws_edge.metrics import EdgeMetrics

WAIT = 2.0


class Delivery:
    """The parts of an aio-pika incoming message the consumer uses."""

    def __init__(
        self, body: bytes, routing_key: str, settled: asyncio.Queue[tuple[str, Any]]
    ) -> None:
        self.body = body
        self.routing_key = routing_key
        self.message_id = None
        self.redelivered = False
        self._settled = settled

    async def ack(self, multiple: bool = False) -> None:
        await self._settled.put(("ack", (self, multiple)))

    async def reject(self, requeue: bool = False) -> None:
        await self._settled.put(("reject", (self, requeue)))


class Socket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.writes.append(frame)
        return True

    def close_with(self, code: int, reason: str) -> None:
        pass

    def keepalive(self, now: float, interval_s: float, timeout_s: float) -> None:
        pass


@pytest.fixture
def settled() -> asyncio.Queue[tuple[str, Any]]:
    return asyncio.Queue()


def make_consumer(hub: Hub, prefetch: int = 512) -> EventConsumer:
    connection = cast(AbstractRobustConnection, None)  # never used without start()
    return EventConsumer(connection, hub, EdgeMetrics(CollectorRegistry()), "test", prefetch, 1)


def delivery(settled: asyncio.Queue[tuple[str, Any]], n: int) -> Delivery:
    envelope = Envelope(
        type="t", to=Address.user("alice"), sender=Address.service("s"), data={"n": n}
    )
    return Delivery(encode(envelope), user_key("alice"), settled)


def alice_online() -> tuple[Hub, Socket]:
    """A hub with one socket of alice's, subscribed to her key."""
    hub, socket = Hub(), Socket()
    hub.track(socket)
    hub.subscribe(socket, [user_key("alice")])
    return hub, socket


def incoming(d: Delivery) -> AbstractIncomingMessage:
    return cast(AbstractIncomingMessage, d)


async def test_events_arriving_together_are_written_and_acknowledged_together(
    settled: asyncio.Queue[tuple[str, Any]],
) -> None:
    hub, socket = alice_online()
    consumer = make_consumer(hub)
    batch = [delivery(settled, n) for n in range(3)]
    for d in batch:
        await consumer.on_message(incoming(d))
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (batch[-1], True))
    assert settled.empty()
    assert len(socket.writes) == 1
    assert [f"\"n\":{n}".encode() in socket.writes[0] for n in range(3)] == [True] * 3


async def test_a_lone_event_is_acknowledged(settled: asyncio.Queue[tuple[str, Any]]) -> None:
    consumer = make_consumer(Hub())
    lone = delivery(settled, 1)
    await consumer.on_message(incoming(lone))
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (lone, True))


async def test_half_a_prefetch_window_is_acknowledged_at_once(
    settled: asyncio.Queue[tuple[str, Any]],
) -> None:
    consumer = make_consumer(Hub(), prefetch=2)
    first = delivery(settled, 1)
    await consumer.on_message(incoming(first))
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (first, True))


async def test_invalid_event_is_rejected_and_the_rest_acknowledged(
    settled: asyncio.Queue[tuple[str, Any]],
) -> None:
    consumer = make_consumer(Hub())
    good = delivery(settled, 1)
    bad = Delivery(b"not an envelope", user_key("alice"), settled)
    misrouted = delivery(settled, 2)
    misrouted.routing_key = user_key("bob")
    after = delivery(settled, 3)
    for d in (good, bad, misrouted, after):
        await consumer.on_message(incoming(d))
    outcomes = [await asyncio.wait_for(settled.get(), WAIT) for _ in range(3)]
    assert outcomes == [
        ("reject", (bad, False)), ("reject", (misrouted, False)), ("ack", (after, True))
    ]


async def test_a_redelivered_event_is_dropped_not_written_twice(
    settled: asyncio.Queue[tuple[str, Any]],
) -> None:
    hub, socket = alice_online()
    consumer = make_consumer(hub)
    again = delivery(settled, 1)
    again.redelivered = True
    await consumer.on_message(incoming(again))
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (again, False))
    fresh = delivery(settled, 2)
    await consumer.on_message(incoming(fresh))
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (fresh, True))
    assert len(socket.writes) == 1 and b'"n":2' in socket.writes[0]
