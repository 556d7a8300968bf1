"""Floors of the history stream: what RabbitMQ and aio-pika cost with no Warren code.

:func:`read_to_marker`, the floor under a pass: an edge's pass (docs/protocol.md 17.3)
appends a marker to ``warren.history`` and reads from a position up to it. Here the same
is done with aio-pika alone, as the edge does it (a stream consumer with a prefetch,
acknowledged in halves), and nothing is done with the messages: no pass can be quicker
on this machine, nor cost the reading process less CPU per message (the CPU time is this
process's, which does nothing else meanwhile but pace the bench's live events through
its publisher worker).

:func:`publish_floor`, the floor under publishing kept events: the same confirmed
publishes through the plain topology and through the one with the stream, so that what
the stream adds to the broker's work per message can be read apart from Warren's.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import time
import uuid
from dataclasses import dataclass
from typing import Final

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bench.meter import broker_process, cpu_seconds
from shared.messaging.names import HISTORY_MARKER_HEADER, HISTORY_STREAM

PREFETCH: Final = 2000  # as the edge's READ_PREFETCH


@dataclass(frozen=True, slots=True)
class FloorRead:
    messages: int
    seconds: float
    cpu_s: float  # this process's CPU time over the read: aio-pika's cost, nothing else's

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


async def read_to_marker(amqp_url: str, since: float | None, timeout_s: float = 120.0) -> FloorRead:
    """Append a marker, then read the stream from ``since`` (Unix seconds, rounded down
    to the second as the edge does; None: from the first message) up to it."""
    connection = await aio_pika.connect(amqp_url)
    try:
        publish = await connection.channel(publisher_confirms=True)
        marker = uuid.uuid4().hex
        started, cpu = time.monotonic(), time.process_time()
        await publish.default_exchange.publish(
            aio_pika.Message(b"{}", headers={HISTORY_MARKER_HEADER: marker}), HISTORY_STREAM)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        stream = await channel.get_queue(HISTORY_STREAM, ensure=False)
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        count = unacked = 0

        async def take(message: AbstractIncomingMessage) -> None:
            nonlocal count, unacked
            if reached.done():
                return
            if (message.headers or {}).get(HISTORY_MARKER_HEADER) == marker:
                reached.set_result(None)
                return
            count += 1
            unacked += 1
            if unacked * 2 >= PREFETCH:
                unacked = 0
                await message.ack(multiple=True)

        offset: str | datetime.datetime = "first" if since is None else (
            datetime.datetime.fromtimestamp(math.floor(since), tz=datetime.timezone.utc))
        await stream.consume(take, arguments={"x-stream-offset": offset})
        await asyncio.wait_for(reached, timeout_s)
        return FloorRead(count, time.monotonic() - started, time.process_time() - cpu)
    finally:
        await connection.close()


@dataclass(frozen=True, slots=True)
class PublishFloor:
    """Confirmed publishes through RabbitMQ's topology of kept events, or the plain one."""

    kept: bool
    messages: int
    seconds: float
    broker_cpu_s: float | None  # the broker process's CPU time over the publishing
    client_cpu_s: float  # this process's

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def per_message_us(self, cpu_s: float | None) -> float | None:
        return None if cpu_s is None or not self.messages else 1e6 * cpu_s / self.messages


FLOOR_BODY: Final = b'{"v":1,"type":"bench.tick","data":{"step":1,"seq":1}}' + b" " * 176


async def publish_floor(amqp_url: str, kept: bool, messages: int,
                        in_flight: int = 512) -> PublishFloor:
    """Publish ``messages`` bodies of about 230 bytes with confirms, ``in_flight`` at a
    time, with aio-pika alone: to a topic exchange bound to one consumed queue (as
    ``warren.events`` to an edge's queue), or, ``kept``, to a second exchange bound to
    that one and to a stream (as ``warren.events.kept``, docs/protocol.md 17.1). The
    difference is what the stream costs the broker, with no Warren code."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.declare_exchange(
            "bench.floor.events", aio_pika.ExchangeType.TOPIC, auto_delete=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(events, "group.#")
        await queue.consume(_drop, no_ack=True)
        target = events
        stream = None
        if kept:
            target = await channel.declare_exchange(
                "bench.floor.kept", aio_pika.ExchangeType.TOPIC, auto_delete=True)
            await events.bind(target, "#")
            stream = await channel.declare_queue(
                "bench.floor.stream", durable=True, arguments={"x-queue-type": "stream"})
            await stream.bind(target, "#")
        broker = broker_process(amqp_url)
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            try:
                await target.publish(aio_pika.Message(FLOOR_BODY), "group.floor")
            finally:
                gate.release()

        tasks = []
        broker_before = cpu_seconds(broker) if broker is not None else None
        started, cpu = time.monotonic(), time.process_time()
        for _ in range(messages):
            await gate.acquire()
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        seconds, client_cpu = time.monotonic() - started, time.process_time() - cpu
        broker_cpu = (cpu_seconds(broker) - broker_before
                      if broker is not None and broker_before is not None else None)
        if stream is not None:
            await stream.delete(if_unused=False, if_empty=False)
        return PublishFloor(kept, messages, seconds, broker_cpu, client_cpu)
    finally:
        await connection.close()


async def _drop(_message: AbstractIncomingMessage) -> None:
    """The edge's queue is consumed; what it receives does not matter here."""
