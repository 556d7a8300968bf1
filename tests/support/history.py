"""History and recovery as a raw client sees them (docs/protocol.md 17).

- :class:`Feed`: events numbered per address from one publisher, so that the order per
  key is defined and a gap or a repeat can be named;
- :func:`position`: a client's position by the rule of 17.2, from the frames it got;
- :func:`read_recovery`: what a recovering socket gets up to ``replay.done``;
- :func:`delivery_problems`: what a client got over its sessions, checked against what
  was published: every event once after de-duplication by id, in order per key, repeats
  only within the window, nothing for keys it does not hold;
- :func:`stream_head`: the first offset of ``warren.history`` and its oldest event, read
  straight from the broker, to see retention at work.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika

from shared.messaging import Address, Envelope, decode, encode
from shared.messaging.broker import Publisher
from shared.messaging.names import HISTORY_MARKER_HEADER, HISTORY_STREAM
from tests.support.client import Client

Frame = dict[str, Any]
SERVICE = Address.service("test")
READ_TIMEOUT_S = 10.0


def is_event(frame: Frame) -> bool:
    """Events are told from the edge's own frames by ``v`` (protocol.md 6.1)."""
    return "v" in frame


def position(frames: Iterable[Frame], start: float | None = None) -> float | None:
    """The position after ``frames``: the ``ts`` of the last event, or the ``position``
    of a ``welcome`` or ``replay.done`` that came after it (17.2)."""
    current = start
    for frame in frames:
        if is_event(frame):
            current = frame["ts"]
        elif frame.get("type") in {"welcome", "replay.done"}:
            current = frame.get("data", {}).get("position", current)
    return current


def since(value: float) -> str:
    """The query parameter for a position: the float's shortest exact repr."""
    return f"since={value!r}"


@dataclass
class Feed:
    """Events published one at a time by one publisher, numbered per address from 0."""

    publisher: Publisher
    event_type: str = "test.event"
    published: list[Envelope] = field(default_factory=list)
    _next: Counter[str] = field(default_factory=Counter)

    async def publish(
        self, to: Address, *, event_type: str | None = None, ts: float | None = None
    ) -> Envelope:
        key = str(to)
        envelope = Envelope(type=event_type or self.event_type, to=to, sender=SERVICE,
                            data={"key": key, "n": self._next[key]})
        if ts is not None:  # a publisher whose clock is elsewhere
            envelope = dataclasses.replace(envelope, ts=ts)
        self._next[key] += 1
        await self.publisher.publish_event(envelope)
        self.published.append(envelope)
        return envelope

    async def rounds(self, addresses: Sequence[Address], count: int) -> list[Envelope]:
        """``count`` rounds of one event to each address, in turn."""
        return [await self.publish(to) for _ in range(count) for to in addresses]

    async def flow(self, addresses: Sequence[Address], stop: asyncio.Event, *, lanes: int) -> None:
        """Publish in rounds over ``addresses`` until ``stop`` is set, in ``lanes``
        concurrent loops, each of its own addresses one at a time: each key still has one
        publisher in order, and a confirm's round trip no longer bounds the rate."""

        async def lane(own: Sequence[Address]) -> None:
            while not stop.is_set():
                for to in own:
                    await self.publish(to)

        await asyncio.gather(*(lane(addresses[i::lanes]) for i in range(lanes)))

    def last(self, key: str) -> Envelope:
        return next(e for e in reversed(self.published) if str(e.to) == key)


@dataclass
class Recovery:
    """What a socket opened with ``since`` got: ``welcome``, then (when recovered) the
    replayed events and ``replay.done``."""

    welcome: Frame
    replayed: list[Frame]
    done: Frame | None

    @property
    def recovered(self) -> bool | None:
        value = self.welcome["data"].get("recovered")
        assert value is None or isinstance(value, bool), self.welcome
        return value


async def read_recovery(client: Client, timeout: float = READ_TIMEOUT_S) -> Recovery:
    """Read a recovering socket's frames up to ``replay.done``; every one before it must
    be an event. Nothing is read when ``welcome`` says it did not recover."""
    recovery = Recovery(client.welcome, [], None)
    if recovery.recovered is not True:
        return recovery
    while True:
        frame = await client.recv(timeout)
        if frame.get("type") == "replay.done" and not is_event(frame):
            recovery.done = frame
            return recovery
        assert is_event(frame), f"a non-event frame before replay.done: {frame}"
        recovery.replayed.append(frame)


def delivery_problems(
    sessions: Sequence[Sequence[Frame]],
    published: Sequence[Envelope],
    keys: Collection[str],
    *,
    window: float,
) -> list[str]:
    """What is wrong with the frames one client received over consecutive sessions.

    Each session is its frames in order, ``welcome`` first; each session after the
    first was opened with the position of the ones before (:func:`position`). Checked:
    nothing for a key the client does not hold; no id twice within a session; an id of
    an earlier session again only if its ``ts`` is within ``window`` of the position it
    reconnected with; per key, after de-duplication, the numbers of ``published`` without
    a gap or a swap from the first one received to the last one published.
    """
    problems: list[str] = []
    by_id = {envelope.id: envelope for envelope in published}
    seen: set[str] = set()
    numbers: dict[str, list[int]] = {key: [] for key in keys}
    before: list[Frame] = []
    for index, frames in enumerate(sessions):
        reconnected_at = position(before) if index else None
        in_session: set[str] = set()
        for frame in frames:
            if not is_event(frame):
                continue
            if frame["to"] not in keys:
                problems.append(f"session {index}: an event for {frame['to']}: {frame}")
                continue
            if frame["id"] in in_session:
                problems.append(f"session {index}: {frame['id']} twice ({frame['data']})")
            in_session.add(frame["id"])
            if frame["id"] in seen:
                assert reconnected_at is not None
                if frame["ts"] < reconnected_at - window:
                    problems.append(
                        f"session {index}: {frame['data']} again, ts {frame['ts']} before "
                        f"position {reconnected_at} - window {window}"
                    )
                continue
            seen.add(frame["id"])
            if frame["id"] in by_id:
                numbers[frame["to"]].append(frame["data"]["n"])
        before.extend(frames)
    last = {str(e.to): e.data["n"] for e in published}
    for key, got in numbers.items():
        if key not in last:
            continue
        if not got:
            problems.append(f"{key}: nothing received")
            continue
        expected = list(range(got[0], last[key] + 1))
        if got != expected:
            missing = sorted(set(expected) - set(got))
            problems.append(
                f"{key}: got {len(got)} of {got[0]}..{last[key]}; missing {missing[:10]}"
                f"{'...' if len(missing) > 10 else ''}; first out of place at "
                f"{next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), len(got))}"
            )
    return problems


@dataclass(frozen=True)
class StreamHead:
    offset: int  # of the first message the stream holds (a marker or an event)
    event: Envelope | None  # the oldest event it holds


async def stream_head(amqp_url: str, timeout: float = READ_TIMEOUT_S) -> StreamHead:
    """Read ``warren.history`` from its first message to its first event (markers are
    skipped). Fails if the stream holds no event within ``timeout``."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)  # a stream is read with a prefetch
        queue = await channel.declare_queue(HISTORY_STREAM, passive=True)
        found: asyncio.Future[StreamHead] = asyncio.get_running_loop().create_future()
        first: list[int] = []

        # A consumer, not aio-pika's queue iterator: the iterator nacks what it holds
        # when it closes, and a stream refuses nacks by closing the connection.
        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            headers = message.headers or {}
            offset = headers["x-stream-offset"]
            assert isinstance(offset, int)
            first[:] = first or [offset]
            if HISTORY_MARKER_HEADER not in headers and not found.done():
                found.set_result(StreamHead(first[0], decode(message.body)))

        await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        return await asyncio.wait_for(found, timeout)


class StreamWriter:
    """Writes to ``warren.history`` alone, as a publisher's channel does when it sends a
    write again to a stream's new leader: the event was routed to queues long before,
    or never reached them. Also watches for the edges' markers."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self._channel = channel
        self._marker: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, connection: aio_pika.abc.AbstractConnection) -> StreamWriter:
        """Watch from the stream's end on: :meth:`marker` is the next marker written."""
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        writer = cls(channel)
        queue = await channel.declare_queue(HISTORY_STREAM, passive=True)
        await queue.consume(writer._on_message, arguments={"x-stream-offset": "next"})
        return writer

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        marker = (message.headers or {}).get(HISTORY_MARKER_HEADER)
        if isinstance(marker, str) and not self._marker.done():
            self._marker.set_result(marker)

    async def marker(self, timeout: float = READ_TIMEOUT_S) -> str:
        """The id of the first marker written since :meth:`open`."""
        return await asyncio.wait_for(asyncio.shield(self._marker), timeout)

    async def write(self, envelope: Envelope) -> None:
        """Append ``envelope`` to the stream, confirmed."""
        await self._channel.default_exchange.publish(
            aio_pika.Message(encode(envelope), content_type="application/json",
                             message_id=envelope.id, type=envelope.type),
            routing_key=HISTORY_STREAM,
        )
