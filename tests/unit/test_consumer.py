"""The edge consumer's batching and acknowledgements, driven with fake deliveries.

The broker side (queue, bindings, dead-lettering) is covered on a real broker in
tests/integration/test_routing.py; here only the pure logic on top of it.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

import aiormq.abc
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from prometheus_client import CollectorRegistry

from shared.messaging import Address, Envelope, encode, user_key
from services.ws_edge.consumer import EventConsumer
from services.ws_edge.hub import Hub
from services.ws_edge.metrics import EdgeMetrics

WAIT = 2.0


class Channel:
    """The parts of an aiormq channel the consumer settles deliveries on."""

    def __init__(self, settled: asyncio.Queue[tuple[str, Any]]) -> None:
        self.is_closed = False
        self.tags = itertools.count(1)
        self._settled = settled

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        await self._settled.put(("ack", (delivery_tag, multiple)))

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        await self._settled.put(("reject", (delivery_tag, requeue)))


class Socket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.writes.append(frame)
        return True

    def close_with(self, code: int, reason: str) -> None:
        pass

    def keepalive(self, now: float, interval_s: float) -> None:
        pass


@pytest.fixture
def settled() -> asyncio.Queue[tuple[str, Any]]:
    return asyncio.Queue()


def make_consumer(hub: Hub, prefetch: int = 512) -> EventConsumer:
    connection = cast(AbstractRobustConnection, None)  # never used without start()
    return EventConsumer(connection, hub, EdgeMetrics(CollectorRegistry()), "test", prefetch, 1)


@pytest.fixture
def channel(settled: asyncio.Queue[tuple[str, Any]]) -> Channel:
    return Channel(settled)


def delivery(
    channel: Channel, n: int = 0, *, body: bytes | None = None,
    routing_key: str = user_key("alice"), redelivered: bool = False,
) -> DeliveredMessage:
    """A delivery as aiormq hands it to a consumer, of an event to alice by default."""
    if body is None:
        body = encode(Envelope(
            type="t", to=Address.user("alice"), sender=Address.service("s"), data={"n": n}
        ))
    deliver = Basic.Deliver(
        consumer_tag="test", delivery_tag=next(channel.tags), redelivered=redelivered,
        exchange="warren.events", routing_key=routing_key,
    )
    header = ContentHeader(body_size=len(body), properties=Basic.Properties(message_id=f"m{n}"))
    return DeliveredMessage(
        delivery=deliver, header=header, body=body,
        channel=cast(aiormq.abc.AbstractChannel, channel),
    )


def tag(message: DeliveredMessage) -> int | None:
    assert isinstance(message.delivery, Basic.Deliver)
    return message.delivery.delivery_tag


def alice_online() -> tuple[Hub, Socket]:
    """A hub with one socket of alice's, subscribed to her key."""
    hub, socket = Hub(), Socket()
    hub.track(socket)
    hub.subscribe(socket, [user_key("alice")])
    return hub, socket


async def test_events_arriving_together_are_written_and_acknowledged_together(
    settled: asyncio.Queue[tuple[str, Any]], channel: Channel
) -> None:
    hub, socket = alice_online()
    consumer = make_consumer(hub)
    batch = [delivery(channel, n) for n in range(3)]
    for d in batch:
        await consumer.on_message(d)
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (tag(batch[-1]), True))
    assert settled.empty()
    assert len(socket.writes) == 1
    assert [f"\"n\":{n}".encode() in socket.writes[0] for n in range(3)] == [True] * 3


async def test_a_lone_event_is_acknowledged(
    settled: asyncio.Queue[tuple[str, Any]], channel: Channel
) -> None:
    consumer = make_consumer(Hub())
    lone = delivery(channel, 1)
    await consumer.on_message(lone)
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (tag(lone), True))


async def test_half_a_prefetch_window_is_acknowledged_at_once(
    settled: asyncio.Queue[tuple[str, Any]], channel: Channel
) -> None:
    consumer = make_consumer(Hub(), prefetch=2)
    first = delivery(channel, 1)
    await consumer.on_message(first)
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (tag(first), True))


async def test_invalid_event_is_rejected_and_the_rest_acknowledged(
    settled: asyncio.Queue[tuple[str, Any]], channel: Channel
) -> None:
    consumer = make_consumer(Hub())
    good = delivery(channel, 1)
    bad = delivery(channel, body=b"not an envelope")
    misrouted = delivery(channel, 2, routing_key=user_key("bob"))
    after = delivery(channel, 3)
    for d in (good, bad, misrouted, after):
        await consumer.on_message(d)
    outcomes = [await asyncio.wait_for(settled.get(), WAIT) for _ in range(3)]
    assert outcomes == [
        ("reject", (tag(bad), False)), ("reject", (tag(misrouted), False)),
        ("ack", (tag(after), True)),
    ]


async def test_a_redelivered_event_is_dropped_not_written_twice(
    settled: asyncio.Queue[tuple[str, Any]], channel: Channel
) -> None:
    hub, socket = alice_online()
    consumer = make_consumer(hub)
    again = delivery(channel, 1, redelivered=True)
    await consumer.on_message(again)
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (tag(again), False))
    fresh = delivery(channel, 2)
    await consumer.on_message(fresh)
    assert await asyncio.wait_for(settled.get(), WAIT) == ("ack", (tag(fresh), True))
    assert len(socket.writes) == 1 and b'"n":2' in socket.writes[0]
