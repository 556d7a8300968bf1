"""Reading the history stream (docs/protocol.md 17): recoveries and history requests.

Requests that reach the edge together share one *pass* over the stream. A pass:

1. appends a marker of its own to the stream, so that it knows where to stop: every
   event routed before the marker was published is before it in the stream, unless the
   stream held its write back while electing a leader; a pass that may have met such a
   write appends a second marker a moment later, and stops there instead (:meth:`_settle`);
2. reads the stream's first message (the *head*): whether the stream still holds what
   a request needs, and the oldest position it holds;
3. reads from the earliest position its requests need up to its marker, handing each
   event to the requests that hold its key and want its time.

Requests that arrive while a pass runs wait for the next one, which then starts at
once: a reconnect storm costs a handful of passes, however many clients it brings.
Recoveries and history requests have a lane each, so a long read of the whole stream
for a history request never holds back a reconnecting client's recovery. The
stream is read over AMQP 0.9.1 (a stream queue consumed with ``x-stream-offset``), on a
channel of the pass's own that closes with it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from shared.config import HistorySettings
from shared.messaging.names import (
    HISTORY_MARKER_HEADER,
    HISTORY_STREAM,
    AddressError,
    parse_destination,
)
from shared.messaging.envelope import new_id
from shared.messaging.producer import MessageKind, Producer
from services.ws_edge.hub import TextFramer
from services.ws_edge.metrics import EdgeMetrics

log = logging.getLogger(__name__)

#: Messages the stream may send a pass before it is acknowledged (streams need a
#: prefetch); acknowledged in halves so the stream never waits for the reader.
READ_PREFETCH: Final = 2000
#: The head is read up to the first event: past other edges' markers, if any.
HEAD_PREFETCH: Final = 64
#: Where a request that wants the whole retained stream starts.
FIRST: Final = "first"
#: A marker confirmed later than this was most likely held back by a stream electing a
#: new leader, as other publishers' writes were: the pass settles (:meth:`_settle`).
SLOW_MARKER_S: Final = 0.25

Seek = float | str  # a position, or FIRST


class HistoryUnavailable(ConnectionError):
    """The stream could not be read: history is off, the broker went away, or a pass
    did not reach its marker in time."""


class HistoryBusy(Exception):
    """A connection asked for history while its last request was still being read."""


@dataclass(frozen=True, slots=True)
class Head:
    """The start of the stream: the offset of its first message (0 if nothing was ever
    dropped) and that message's time, an event's or a marker's; and the position of
    the oldest event it holds (None if it holds none before the pass's marker)."""

    offset: int
    position: float
    oldest: float | None

    def holds(self, position: float) -> bool:
        """Whether every event from ``position`` on is still in the stream."""
        return self.offset == 0 or self.position <= position


class ReplayTarget(Protocol):
    """A recovering socket, as a pass sees it (services/ws_edge/handlers/websocket.py)."""

    def replay_begins(self, recovered: bool, oldest: float | None) -> bool:
        """Write the ``welcome``; False if there is nothing to read for it (not
        recovered, or the socket is gone)."""
        ...

    def replay_event(self, frame: bytes, event_id: str) -> bool:
        """Write one replayed event; False once the socket is gone."""
        ...

    def replay_ends(self) -> None:
        """The pass reached its marker: go live."""
        ...


class Request:
    """One reader of a pass: what it wants, and what it does with the events."""

    keys: frozenset[str]
    done: asyncio.Future[None]
    #: Whether the pass that serves it always settles (:meth:`HistoryReader._settle`).
    settles: bool = False
    #: The broker connection losses the reader had counted when it was asked.
    losses: int = 0

    def seek(self, head: Head) -> Seek | None:
        """Where this request needs the pass to start reading, given the stream's head;
        None if it needs nothing read."""
        raise NotImplementedError

    def accept(self, ts: float, body: bytes, event_id: str, frame: Callable[[], bytes]) -> bool:
        """Take one event of one of :attr:`keys`; False once it wants no more."""
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class Recovery(Request):
    """A socket that reconnected with ``since``: every event of its keys whose ``ts`` is
    at least ``since - window``. ``in_band``: an open socket's replay after its edge's
    broker connection broke (docs/protocol.md 17.5); its pass settles."""

    def __init__(self, target: ReplayTarget, keys: frozenset[str], since: float,
                 window_s: float, *, in_band: bool = False) -> None:
        self.keys = keys
        self.settles = in_band
        self.done = asyncio.get_running_loop().create_future()
        self._target = target
        self._from = since - window_s
        self._reading = False
        self.replayed = 0

    def seek(self, head: Head) -> Seek | None:
        recovered = head.holds(self._from)
        self._reading = self._target.replay_begins(recovered, head.oldest)
        if not self._reading:
            self.done.set_result(None)  # live already: no need to wait for the read
            return None
        return self._from

    def accept(self, ts: float, body: bytes, event_id: str, frame: Callable[[], bytes]) -> bool:
        if not self._reading:
            return False
        if ts < self._from:
            return True
        if not self._target.replay_event(frame(), event_id):
            self._reading = False
            return False
        self.replayed += 1
        return True

    def finish(self) -> None:
        if self._reading:
            self._target.replay_ends()


class Query(Request):
    """A ``history`` frame: the newest ``limit`` events of one key from ``since`` on."""

    def __init__(self, key: str, since: float | None, limit: int) -> None:
        self.keys = frozenset((key,))
        self.done = asyncio.get_running_loop().create_future()
        self._since = since
        self.events: deque[Any] = deque(maxlen=limit)
        self.oldest: float | None = None

    def seek(self, head: Head) -> Seek | None:
        self.oldest = head.oldest
        return FIRST if self._since is None else self._since

    def accept(self, ts: float, body: bytes, event_id: str, frame: Callable[[], bytes]) -> bool:
        if self._since is None or ts >= self._since:
            self.events.append(orjson.Fragment(body))
        return True

    def finish(self) -> None:
        pass


@dataclass(slots=True)
class _Pass:
    """What one pass reads for: its requests by key, and its marker; and what it waits
    for now, failed at once if its channel closes (the broker went away)."""

    requests: list[Request]
    marker: str = field(default_factory=new_id)
    by_key: dict[str, list[Request]] = field(default_factory=dict)
    waiting: asyncio.Future[Any] | None = None

    def channel_closed(self, _channel: object, reason: BaseException | None) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(HistoryUnavailable(f"stream channel closed: {reason!r}"))

    async def wait(self, future: asyncio.Future[Any]) -> Any:
        self.waiting = future
        return await future


class _Lane:
    """Requests of one kind: served by passes one at a time, each for all that wait."""

    def __init__(self, serve: Callable[[list[Request]], Any]) -> None:
        self._serve = serve
        self.waiting: list[Request] = []
        self.runner: asyncio.Task[None] | None = None

    def add(self, request: Request) -> None:
        self.waiting.append(request)
        if self.runner is None:
            self.runner = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self.waiting:
                requests, self.waiting = self.waiting, []
                await self._serve(requests)
        finally:
            self.runner = None


class HistoryReader:
    """Runs passes over the stream, one at a time per lane, for the requests waiting."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        producer: Producer,
        settings: HistorySettings,
        metrics: EdgeMetrics,
        framer: TextFramer,
    ) -> None:
        self._connection = connection
        self._producer = producer
        self._settings = settings
        self._metrics = metrics
        self._framer = framer
        self._recoveries = _Lane(self._serve)
        self._queries = _Lane(self._serve)
        self._closed = False
        self._losses = 0
        connection.close_callbacks.add(self._lost)

    @property
    def settings(self) -> HistorySettings:
        return self._settings

    async def read(self, request: Request) -> None:
        """Have ``request`` served by the next pass; raise :class:`HistoryUnavailable`
        if it could not be."""
        if self._closed or not self._settings.enabled:
            raise HistoryUnavailable("history is off")
        self._enqueue(request)
        await asyncio.shield(request.done)

    async def read_all(self, requests: Sequence[Request]) -> list[BaseException | None]:
        """Have all of ``requests`` served together, by the next pass of their lane (they
        join it in one step, so a thousand of them cost one pass); return each one's
        failure, or None. Raise :class:`HistoryUnavailable` if none can be served."""
        if self._closed or not self._settings.enabled:
            raise HistoryUnavailable("history is off")
        for request in requests:
            self._enqueue(request)
        outcomes = await asyncio.gather(
            *(asyncio.shield(request.done) for request in requests), return_exceptions=True
        )
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    def _enqueue(self, request: Request) -> None:
        request.losses = self._losses
        (self._recoveries if isinstance(request, Recovery) else self._queries).add(request)

    def _lost(self, *_args: object) -> None:
        self._losses += 1

    async def close(self) -> None:
        """Fail the requests waiting and stop after the passes that run."""
        self._closed = True
        for lane in (self._recoveries, self._queries):
            waiting, lane.waiting = lane.waiting, []
            for request in waiting:
                _fail(request, HistoryUnavailable("the edge is stopping"))
        runners = [lane.runner for lane in (self._recoveries, self._queries) if lane.runner]
        await asyncio.gather(*runners, return_exceptions=True)

    async def _serve(self, requests: list[Request]) -> None:
        self._metrics.history_passes.inc()
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._pass(_Pass(requests)), self._settings.read_timeout_s)
        except Exception as exc:
            log.warning("history pass failed", extra={"requests": len(requests),
                                                      "error": repr(exc)})
            for request in requests:
                _fail(request, HistoryUnavailable(f"the history stream could not be read: {exc!r}"))
            return
        finally:
            self._metrics.history_pass_seconds.observe(time.monotonic() - started)
        for request in requests:
            if not request.done.done():
                request.done.set_result(None)

    async def _pass(self, run: _Pass) -> None:
        marked_at = time.time()
        await self._mark(run.marker, marked_at)
        if time.time() - marked_at > SLOW_MARKER_S or any(r.settles for r in run.requests):
            await self._settle(run)
        channel = await self._connection.channel()
        channel.close_callbacks.add(run.channel_closed)
        try:
            # A stream consumer needs a prefetch; the head needs a few messages, the read many.
            await channel.set_qos(prefetch_count=HEAD_PREFETCH)
            stream = await channel.get_queue(HISTORY_STREAM, ensure=False)
            head = await self._head(stream, run)
            await channel.set_qos(prefetch_count=READ_PREFETCH)
            start: Seek | None = None
            for request in run.requests:
                seek = request.seek(head)
                if seek is None:
                    continue
                for key in request.keys:
                    run.by_key.setdefault(key, []).append(request)
                start = seek if start is None else _earlier(start, seek)
            if start is not None:
                # Never after the marker, or the read would wait for what comes after it;
                # the window allows for the broker's clock being behind this edge's.
                if not isinstance(start, str):
                    start = min(start, marked_at - self._settings.window_s)
                await self._read(stream, run, start)
        finally:
            # Also when it closed with the connection: a robust channel is opened again
            # after a reconnect unless it was closed on purpose.
            try:
                await channel.close()
            except (AMQPError, ChannelInvalidStateError, ConnectionError):
                pass
        for request in run.requests:
            if isinstance(request, Recovery) and request.losses != self._losses:
                # Its keys were bound to a queue that has gone since, and this marker may
                # have been written before they were bound to the new one: what was routed
                # in between is in neither the replay nor the live events.
                _fail(request, HistoryUnavailable("the broker connection broke meanwhile"))
            else:
                request.finish()

    async def _mark(self, marker: str, at: float) -> None:
        await self._producer.publish_body(
            orjson.dumps({"ts": at}), self._producer.default_exchange, HISTORY_STREAM,
            kind=MessageKind.EVENT, mandatory=False, headers={HISTORY_MARKER_HEADER: marker},
        )

    async def _settle(self, run: _Pass) -> None:
        """Give the stream's held-back writes time to land, then end the pass at a new
        marker.

        A stream whose leader's node stops holds back the writes sent to that leader until
        it has elected another; each publisher's channel sends its own again once it learns
        of the new leader, which can be after this pass's marker was written. An event
        routed before the sockets' keys were bound would then be after the marker: in
        neither the replay nor the live events held back. So a pass whose marker was
        confirmed late (the stream was electing), or that replays in band (its edge's
        broker connection just broke, most likely with a node), waits
        ``WARREN_HISTORY_SETTLE_S`` and reads up to a second marker."""
        self._metrics.history_settled_passes.inc()
        await asyncio.sleep(self._settings.settle_s)
        run.marker = new_id()
        await self._mark(run.marker, time.time())

    async def _head(self, stream: Any, run: _Pass) -> Head:
        """The start of the stream, read up to its first event or the pass's own marker
        (there is always that one)."""
        first: asyncio.Future[Head] = asyncio.get_running_loop().create_future()
        start: tuple[int, float] | None = None

        async def take(message: AbstractIncomingMessage) -> None:
            nonlocal start
            if first.done():
                return
            position = _position(message.body)
            if start is None:
                start = (_offset(message), position)
            marker = (message.headers or {}).get(HISTORY_MARKER_HEADER)
            if marker is None:
                first.set_result(Head(*start, oldest=position))
            elif marker == run.marker:
                first.set_result(Head(*start, oldest=None))
            else:
                await message.ack()

        tag = await stream.consume(take, arguments={"x-stream-offset": FIRST}, robust=False)
        try:
            head: Head = await run.wait(first)
            return head
        finally:
            await stream.cancel(tag)

    async def _read(self, stream: Any, run: _Pass, start: Seek) -> None:
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        unacked = 0
        framer = self._framer
        replayed = self._metrics.history_replayed

        async def take(message: AbstractIncomingMessage) -> None:
            nonlocal unacked
            if reached.done():
                return
            headers = message.headers
            if headers and HISTORY_MARKER_HEADER in headers:
                if headers[HISTORY_MARKER_HEADER] == run.marker:
                    reached.set_result(None)
                    return
            else:
                _hand_out(run, message.body, framer, replayed)
            unacked += 1
            if unacked * 2 >= READ_PREFETCH:
                unacked = 0
                await message.ack(multiple=True)

        tag = await stream.consume(
            take, arguments={"x-stream-offset": _offset_argument(start)}, robust=False
        )
        try:
            await run.wait(reached)
        finally:
            try:
                await stream.cancel(tag)
            except (AMQPError, ChannelInvalidStateError, ConnectionError):
                pass  # the channel is closed with the pass


def _hand_out(run: _Pass, body: bytes, framer: TextFramer, replayed: Any) -> None:
    """Give one stream message to the requests that hold its key."""
    try:
        raw = orjson.loads(body)
        key = parse_destination(raw["to"]).routing_key
        ts = raw["ts"]
        event_id = raw["id"]
    except (orjson.JSONDecodeError, AddressError, KeyError, TypeError):
        return  # the edge's queue rejects such a message too (consumer.py)
    readers = run.by_key.get(key)
    if not readers or not isinstance(ts, (int, float)) or not isinstance(event_id, str):
        return
    built: list[bytes] = []

    def frame() -> bytes:
        if not built:
            built.append(framer.text(body))
        return built[0]

    for request in tuple(readers):
        if not request.accept(ts, body, event_id, frame):
            for key_ in request.keys:
                holders = run.by_key.get(key_)
                if holders and request in holders:
                    holders.remove(request)
    if built:
        replayed.inc()


def _fail(request: Request, exc: Exception) -> None:
    if not request.done.done():
        request.done.set_exception(exc)
        request.done.exception()  # retrieved here: a socket that left will not await it


def _earlier(a: Seek, b: Seek) -> Seek:
    if a == FIRST or b == FIRST:
        return FIRST
    assert isinstance(a, float) and isinstance(b, float)
    return min(a, b)


def _offset_argument(start: Seek) -> str | datetime.datetime:
    """``x-stream-offset`` for ``start``: an AMQP timestamp has whole seconds, so a
    position is rounded down (the read starts at most a second early)."""
    if isinstance(start, str):
        return start
    if start <= 0:
        return FIRST
    return datetime.datetime.fromtimestamp(math.floor(start), tz=datetime.timezone.utc)


def _offset(message: AbstractIncomingMessage) -> int:
    offset = (message.headers or {}).get("x-stream-offset")
    return offset if isinstance(offset, int) else 0


def _position(body: bytes) -> float:
    try:
        ts = orjson.loads(body).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return 0.0
    return float(ts) if isinstance(ts, (int, float)) else 0.0
