"""An asyncio client for Warren's edge: events in, frames out, reconnecting on its own.

::

    async with Client("wss://edge.example/ws", get_token=login) as client:
        await client.send("message.send", to="group:team", data={"text": "hi"})
        async for event in client:
            print(event.type, event.data)

The protocol is docs/protocol.md; what this client does with it (states, the
reconnect and close-code policy, token refresh, de-duplication, recovering what it
missed from its position, history) is docs/clients.md.
The JavaScript client (clients/js) follows the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_FLOOR, Decimal
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, TypeGuard

import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

log = logging.getLogger("warren.client")

State: TypeAlias = Literal[
    "idle", "connecting", "recovering", "connected", "reconnecting", "closed", "unauthorized",
    "failed",
]
#: States the client never leaves: it was closed, or it stopped and says why (``error``).
FINAL_STATES: Final[frozenset[State]] = frozenset({"closed", "unauthorized", "failed"})

TokenSource: TypeAlias = Callable[[], "str | Awaitable[str]"]

#: The subprotocol the client asks for, and the prefix of the entry that carries the token
#: (docs/protocol.md 5.1): a browser can set no header on a WebSocket, and a query string
#: ends up in proxies' access logs.
SUBPROTOCOL: Final = "warren.v1"
AUTH_SUBPROTOCOL_PREFIX: Final = "warren.auth."

#: The ``window`` an edge sends in its ``welcome`` (docs/protocol.md 17.2), assumed until
#: one says otherwise.
DEFAULT_WINDOW_S: Final = 2.0
#: Ids are remembered for ``window`` and this much more: the edge reads the stream from
#: ``position - window`` with a granularity of one second.
SEEN_MARGIN_S: Final = 1.0
MICROSECOND: Final = Decimal("0.000001")

Action: TypeAlias = Literal["retry", "drain", "overload", "auth", "stop"]

#: What a close code the edge sends means for the client (docs/protocol.md, section 8).
#: ``retry``: back off and reconnect; ``drain``: the edge is stopping, reconnect at once;
#: ``overload``: back off harder; ``auth``: get a new token first; ``stop``: reconnecting
#: would only repeat the failure. Codes not listed stop the client.
CLOSE_POLICY: Final[Mapping[int, Action]] = {
    1000: "retry",  # an edge from before the heartbeat: its ping timed out
    1001: "drain",
    1006: "retry",  # no close frame: the connection was lost
    1009: "retry",  # a frame of ours was too big; it is never sent again
    1011: "retry",
    1012: "retry",
    1013: "overload",
    1014: "retry",
    4001: "auth",
    4008: "retry",  # we read too slowly; the events not written are lost
    4029: "retry",  # too many invalid frames; the application's frames are at fault
    4030: "retry",  # too many frames
}


#: Closes for the client's own frames (too large, too often refused, too many): reported
#: through ``on_error`` as well, since reconnecting hides them.
OWN_FAULT_CLOSES: Final = frozenset({1009, 4029, 4030})


class WarrenError(Exception):
    """A refusal by the edge (the ``code`` of an ``error`` frame or an HTTP refusal), or
    a failure of the client itself (``timeout``, ``disconnected``, ``closed``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Event:
    """One envelope as the edge delivered it (docs/protocol.md, section 2)."""

    id: str
    type: str
    sender: str  # the envelope's ``from``
    to: str
    ts: float
    data: dict[str, Any]

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Event:
        """The event of an envelope frame; ``ValueError`` names the first field that is
        missing or of the wrong JSON type."""
        id_, type_, sender, to, ts, data = (
            frame.get("id"), frame.get("type"), frame.get("from"), frame.get("to"),
            frame.get("ts"), frame.get("data"),
        )
        if not isinstance(id_, str) or not id_:
            raise ValueError("event without a string 'id'")
        if not isinstance(type_, str):
            raise ValueError("event without a string 'type'")
        if not isinstance(sender, str):
            raise ValueError("event without a string 'from'")
        if not isinstance(to, str):
            raise ValueError("event without a string 'to'")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise ValueError("event without a numeric 'ts'")
        if not isinstance(data, dict):
            raise ValueError("event whose 'data' is not an object")
        return cls(id_, type_, sender, to, float(ts), data)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as JSON-ready fields, in the order the edge writes them."""
        return {"v": 1, "id": self.id, "type": self.type, "ts": self.ts, "to": self.to,
                "from": self.sender, "data": self.data}


@dataclass(frozen=True, slots=True)
class Welcome:
    """The ``welcome`` frame of the current connection (docs/protocol.md 6.1, 17.3)."""

    user: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    edge: str
    #: The edge's time when the socket's keys were bound (None from an edge without it).
    position: float | None = None
    #: How much older than a position an event can be and still be sent again (17.2).
    window: float = DEFAULT_WINDOW_S
    #: ``True``: what was missed since the position the client sent is replayed now,
    #: up to ``replay.done``; ``False``: it cannot be (``reason``), events were lost, read
    #: recorded state again; ``None``: the client sent no position.
    recovered: bool | None = None
    #: Why not recovered: ``too_old``, ``invalid_position``, ``history_off`` (the edge's),
    #: or ``unsupported`` (the client's: the edge said nothing of recovery).
    reason: str | None = None
    #: With ``too_old``: the position of the oldest event the edge's history holds.
    oldest: float | None = None
    #: The position the client reconnected with (``?since=``), if any.
    since: float | None = None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What the edge said of the events the client missed (docs/protocol.md 17.3, 17.5):
    after each ``welcome``, of the position the client reconnected with (as
    :class:`Welcome` says it); or ``in_band``, after replaying on the open socket what
    was routed while the edge's broker connection was away."""

    #: ``True``: everything since the position is replayed (after a welcome: now, up to
    #: ``replay.done``; in band: it was); ``False``: it cannot be, events were lost
    #: (``reason``): read recorded state again; ``None``: the client sent no position.
    recovered: bool | None
    #: Why not: ``too_old``, ``invalid_position``, ``history_off`` (the edge's), or
    #: ``unsupported`` (the client's: the edge said nothing of recovery).
    reason: str | None = None
    #: With ``too_old``: the position of the oldest event the edge's history holds.
    oldest: float | None = None
    #: The position the client reconnected with; in band, the one the edge replayed from
    #: (before its window).
    since: float | None = None
    #: The events the edge replayed, once its ``replay.done`` came; None before, and
    #: without a replay.
    replayed: int | None = None
    #: ``False``: the answer of a ``welcome``, told before its replay; ``True``: of a
    #: ``replay.done`` on the open socket, told after it.
    in_band: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """The answer to :meth:`Client.history` (docs/protocol.md 17.4)."""

    key: str
    #: Oldest first.
    events: tuple[Event, ...]
    #: The position of the oldest event the edge's history holds (None: it holds none).
    #: Later than the ``since`` asked for: older events are gone.
    oldest: float | None


@dataclass(frozen=True, slots=True)
class StateChange:
    state: State
    #: Why: the close or refusal that ended a connection, or what stopped the client.
    error: WarrenError | None = None
    #: For ``reconnecting``: the seconds the client waits before its next attempt.
    delay: float | None = None
    #: For ``recovering`` and ``connected``: the welcome of the connection, which says
    #: whether what was missed is recovered (``welcome.recovered``).
    welcome: Welcome | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    """When to try again (docs/clients.md, "Reconnecting").

    The n-th consecutive failed attempt waits a random time in ``[0, min(cap_s, base_s *
    2**(n-1))]`` (full jitter, so that clients cut off together do not return together).
    After 1013 or ``503 overloaded`` the base is ``overload_base_s`` and the wait comes on
    top of the edge's ``Retry-After``. After 1001 (the edge is draining) the next attempt
    comes at once, after a random wait of at most ``drain_jitter_s``. The JavaScript client
    (clients/js) uses the same numbers.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    overload_base_s: float = 5.0
    drain_jitter_s: float = 0.5
    #: Consecutive failed attempts after which the client stops (state ``failed``);
    #: ``None``: it never gives up on network failures.
    max_failures: int | None = None
    #: A uniform random number in [0, 1); tests pass a fixed one.
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, failures: int, *, overload: bool = False, retry_after: float = 0.0) -> float:
        base = self.overload_base_s if overload else self.base_s
        ceiling = min(self.cap_s, base * 2.0 ** max(0, min(failures - 1, 32)))
        return retry_after + self.jitter() * ceiling


@dataclass(slots=True)
class Stats:
    events: int = 0  # delivered to the application
    duplicates: int = 0  # events dropped because their id was seen already
    garbage_frames: int = 0  # frames that were not valid protocol frames
    unrouted: int = 0  # events no subscription wanted
    connects: int = 0  # welcomes received
    recovered: int = 0  # welcomes with ``recovered: true``
    not_recovered: int = 0  # welcomes that could not recover the position sent
    replayed: int = 0  # events the edge replayed, as its ``replay.done`` frames count them
    in_band_recovered: int = 0  # in-band replays (17.5) that recovered everything
    in_band_not_recovered: int = 0  # in-band replays that could not (events were lost)


class SeenIds:
    """The ids of the events delivered, for as long as an edge may send them again.

    A recovery replays from ``position - window`` (docs/protocol.md 17.2), so an id is
    needed while its event's ``ts`` is at least ``position - window - SEEN_MARGIN_S``.
    Ids go into the current of two generations; a new one starts when an event's ``ts``
    is more than ``span_s`` (window + margin) past the first of the current one, or it
    holds half of ``cap``, and the older generation is dropped whole. So an id stays at
    least ``span_s`` of ``ts`` (or ``cap / 2`` ids), at most twice that, and each costs
    O(1): no pass over the set, which at tens of thousands of events a second would show.
    """

    __slots__ = ("current", "previous", "span_s", "_half", "_opened")

    def __init__(self, cap: int) -> None:
        if cap < 2:
            raise ValueError("dedup_size must be at least 2")
        #: Read directly by ``Client._deliver``, the hot path.
        self.current: set[str] = set()
        self.previous: set[str] = set()
        self.span_s = DEFAULT_WINDOW_S + SEEN_MARGIN_S
        self._half = cap // 2
        self._opened = -math.inf  # the ts of the current generation's first event

    def __contains__(self, event_id: object) -> bool:
        return event_id in self.current or event_id in self.previous

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def add(self, event_id: str, ts: float) -> None:
        current = self.current
        if ts - self._opened > self.span_s or len(current) >= self._half:
            self.previous, self.current, self._opened = current, set(), ts
            current = self.current
        current.add(event_id)


class Subscription:
    """Events of some types (or all), in the order they arrived; an async iterator.

    It holds ``buffer`` events: when the application reads more slowly than events
    arrive, the client stops reading the socket, and the edge, once its own buffer for
    the socket is full, closes it with 4008 (the client reconnects; the events the edge
    had not written are lost). While a :meth:`Client.send` waits for its answer the
    client reads on regardless, so that an application sending from inside its event
    loop cannot wait for an answer queued behind the events it has not read.
    Iteration ends when the client is closed, and raises the client's ``error`` when the
    client stopped on its own.
    """

    def __init__(self, client: Client, types: frozenset[str] | None, buffer: int) -> None:
        self._client = client
        self.types = types
        self._buffer = buffer
        self._items: deque[Event] = deque()
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._ended = False
        self._error: WarrenError | None = None

    def wants(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._readable = asyncio.get_running_loop().create_future()
            try:
                await self._readable
            finally:
                self._readable = None
        event = self._items.popleft()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving: the client drops this subscription's events from now on."""
        self._client._unsubscribe(self)
        self._end(None)

    async def _put(self, event: Event) -> None:
        while len(self._items) >= self._buffer and not self._ended and not self._client._pending:
            self._writable = asyncio.get_running_loop().create_future()
            try:
                await self._writable
            finally:
                self._writable = None
        if self._ended:
            return
        self._items.append(event)
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    def _resume(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _end(self, error: WarrenError | None) -> None:
        if self._ended:
            return
        self._ended, self._error = True, error
        for waiter in (self._readable, self._writable):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one connection attempt ended."""

    action: Action
    error: WarrenError
    welcomed: bool = False
    retry_after: float = 0.0


class Client:
    """A connection to Warren that reconnects until it is closed or must stop.

    ``url`` is the edge's ``/ws`` address, or several, tried in turn. The token comes
    from ``token``, from ``get_token()`` (sync or async; called again when the token
    is refused or about to expire), or both. ``auth`` chooses where the token travels:
    ``"subprotocol"`` (``Sec-WebSocket-Protocol``, docs/protocol.md 5.1) or ``"header"``
    (``Authorization: Bearer``); neither puts it in the URL. ``position`` is one an
    application kept from an earlier client (``client.position``): the first connection
    then recovers what was published since (docs/protocol.md 17).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        auth: Literal["subprotocol", "header"] = "subprotocol",
        backoff: Backoff = Backoff(),
        refresh: bool = True,
        position: float | None = None,
        dedup_size: int = 32_768,
        buffer: int = 4096,
        open_timeout_s: float = 10.0,
        welcome_timeout_s: float = 30.0,
        max_size: int = 16 << 20,
    ) -> None:
        if token is None and get_token is None:
            raise ValueError("a Client needs a token or get_token")
        self.urls: tuple[str, ...] = (url,) if isinstance(url, str) else tuple(url)
        if not self.urls:
            raise ValueError("a Client needs at least one url")
        self._token = token
        self._get_token = get_token
        self._auth = auth
        self.backoff = backoff
        self._refresh_enabled = refresh
        if position is not None and not _is_position(position):
            raise ValueError(f"a position is a finite, non-negative number, not {position!r}")
        self._buffer = buffer
        self._open_timeout_s = open_timeout_s
        self._welcome_timeout_s = welcome_timeout_s
        self._max_size = max_size

        self.state: State = "idle"
        #: Why the client stopped, or why its last connection ended.
        self.error: WarrenError | None = None
        self.welcome: Welcome | None = None
        #: What the last ``welcome``, or in-band ``replay.done``, said of the events missed.
        self.recovery: Recovery | None = None
        #: The id of the newest event delivered.
        self.last_event_id: str | None = None
        #: Where a reconnect resumes from (docs/protocol.md 17.2): the ``ts`` of the last
        #: event received, or the ``position`` of the last ``welcome`` that replays
        #: nothing or ``replay.done``, whichever came last. ``None`` until one came.
        self.position: float | None = None if position is None else float(position)
        self.stats = Stats()

        self._seen = SeenIds(dedup_size)
        self._subscriptions: list[Subscription] = []
        self._state_listeners: list[Callable[[StateChange], None]] = []
        self._error_listeners: list[Callable[[WarrenError], None]] = []
        self._token_listeners: list[Callable[[str], None]] = []
        self._recovery_listeners: list[Callable[[Recovery], None]] = []
        self._state_waiters: list[tuple[frozenset[State], asyncio.Future[StateChange]]] = []
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_ref = 0
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()  # ends a backoff wait early: close() was called
        self._run_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._closing = False
        self._stale_token = False  # the edge refused the current token

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> Welcome:
        """Start the client and wait for its first ``welcome``; raise ``error`` if the
        client stops first. Without a network the wait lasts as long as the backoff
        policy keeps trying (for ever by default): bound it with ``asyncio.timeout``.

        With a position, it returns at the ``welcome`` too, in state ``recovering``: the
        replay comes through the subscriptions, which the application must be reading
        for it to end (``wait_for_state("connected")`` waits for its end)."""
        if self._run_task is None:
            if self.state in FINAL_STATES:
                raise WarrenError("closed", "the client was closed")
            self._run_task = asyncio.create_task(self._guarded_run(), name="warren-client")
        change = await self.wait_for_state("connected", "recovering", *FINAL_STATES)
        if change.state in FINAL_STATES:
            raise change.error or WarrenError(change.state, "the client stopped")
        assert self.welcome is not None
        return self.welcome

    async def close(self) -> None:
        """Close the socket (1000) and stop; subscriptions end, pending sends fail."""
        self._closing = True
        self._wake.set()
        if self._ws is not None:
            await self._ws.close(1000, "client closed")
        if self._run_task is not None:
            # Also ends an attempt still opening its socket or waiting for its welcome.
            self._run_task.cancel()
            await asyncio.gather(self._run_task, return_exceptions=True)
        if self.state not in FINAL_STATES:
            self._finish("closed", None)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- events and states --------------------------------------------------------------

    def events(self, *types: str) -> Subscription:
        """Subscribe now to events of these types (all when none are named). Events that
        arrive while no subscription wants them are dropped and counted, so subscribe
        before ``connect()`` to miss none."""
        subscription = Subscription(self, frozenset(types) if types else None, self._buffer)
        if self.state in FINAL_STATES:
            subscription._end(self.error if self.state != "closed" else None)
        else:
            self._subscriptions.append(subscription)
        return subscription

    def __aiter__(self) -> Subscription:
        return self.events()

    def on_state(self, listener: Callable[[StateChange], None]) -> Callable[[], None]:
        """Call ``listener`` on every change of state; returns a function that removes it."""
        self._state_listeners.append(listener)
        return lambda: self._state_listeners.remove(listener)

    def on_error(self, listener: Callable[[WarrenError], None]) -> Callable[[], None]:
        """Call ``listener`` with problems that end nothing: a garbage frame from the
        edge (``garbage_frame``), an error frame that answers no request, a failed token
        refresh. Returns a function that removes it."""
        self._error_listeners.append(listener)
        return lambda: self._error_listeners.remove(listener)

    def on_recovery(self, listener: Callable[[Recovery], None]) -> Callable[[], None]:
        """Call ``listener`` with a :class:`Recovery` after each ``welcome`` (before its
        replay), and after each in-band replay (``in_band``: the edge's broker connection
        broke and came back while the socket stayed open, docs/protocol.md 17.5).
        ``recovered`` False means events were lost: read recorded state again. Returns a
        function that removes it."""
        self._recovery_listeners.append(listener)
        return lambda: self._recovery_listeners.remove(listener)

    def on_token(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener`` with each new token the client takes: once the edge acked its
        ``auth.refresh`` (the socket then receives what the new token allows), or once a
        new token from ``get_token`` is about to be used to connect. Returns a function
        that removes it."""
        self._token_listeners.append(listener)
        return lambda: self._token_listeners.remove(listener)

    async def wait_for_state(self, *states: State) -> StateChange:
        """Wait until the client is in one of ``states`` (at once if it is now), or in a
        final state, which it never leaves."""
        if self.state in states:
            return StateChange(self.state, self.error)
        waiter: asyncio.Future[StateChange] = asyncio.get_running_loop().create_future()
        self._state_waiters.append((frozenset(states), waiter))
        return await waiter

    # -- requests -----------------------------------------------------------------------

    async def send(
        self, type: str, *, to: str | None = None, data: Mapping[str, Any] | None = None,
        timeout: float | None = 30.0,
    ) -> dict[str, Any]:
        """Send a frame and return the ``data`` of its ``ack`` (``{"id": ...}`` for
        ``message.send`` and commands); raise ``WarrenError`` with the code of its
        ``error``. Waits for a connection first, within ``timeout``. A frame whose
        socket closes before its answer raises ``disconnected``: it may or may not have
        been handled, and it is not sent again."""
        frame: dict[str, Any] = {"type": type, "data": dict(data or {})}
        if to is not None:
            frame["to"] = to
        try:
            async with asyncio.timeout(timeout):
                return await self._request(frame)
        except TimeoutError:
            raise WarrenError("timeout", f"no answer to {type!r} within {timeout} s") from None

    async def command(
        self, type: str, data: Mapping[str, Any] | None = None, *, timeout: float | None = 30.0
    ) -> dict[str, Any]:
        """Send a command (``run.start``, ``chat.ask``, ...); as :meth:`send`."""
        return await self.send(type, data=data, timeout=timeout)

    async def history(
        self, key: str, *, limit: int | None = None, since: float | None = None,
        timeout: float | None = 30.0,
    ) -> History:
        """The newest ``limit`` events (the edge's default: 100; at most 1000) kept for
        ``key`` (``user:<me>``, ``group:<one of mine>`` or ``broadcast``), with ``ts`` at
        least ``since`` when given, oldest first (docs/protocol.md 17.4). Raises
        ``WarrenError`` with the edge's code: ``forbidden`` for a key the token does not
        hold, ``invalid_frame``, ``unavailable`` (history is off or unreadable),
        ``rate_limited``; or the client's own, as :meth:`send`. It leaves the client's
        position and de-duplication alone: history is a read beside the live events."""
        data: dict[str, Any] = {"key": key}
        if limit is not None:
            data["limit"] = limit
        if since is not None:
            data["since"] = since
        answer = await self.send("history", data=data, timeout=timeout)
        frames, oldest = answer.get("events"), answer.get("oldest")
        if not isinstance(frames, list) or not (
            oldest is None or (_is_number(oldest) and math.isfinite(oldest))
        ):
            raise WarrenError("garbage_frame",
                              f"a history answer of the wrong shape: {answer!r:.200}")
        events = []
        for frame in frames:
            try:
                events.append(Event.from_frame(frame if isinstance(frame, dict) else {}))
            except ValueError as exc:
                self._garbage(f"in a history answer: {exc}")
        return History(str(answer.get("key", key)), tuple(events),
                       None if oldest is None else float(oldest))

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        while True:
            if self.state in FINAL_STATES:
                raise self._final_error()
            ws = self._ws
            if self._connected.is_set() and ws is not None:
                break
            await _first_of(self._connected.wait(), self._stopped.wait())
        self._next_ref += 1
        ref = frame["ref"] = self._next_ref
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = answer
        for subscription in self._subscriptions:
            subscription._resume()
        try:
            try:
                await ws.send(orjson.dumps(frame).decode())
            except ConnectionClosed:
                raise WarrenError(
                    "disconnected", "the connection closed before the frame was sent") from None
            return await answer
        finally:
            self._pending.pop(ref, None)

    # -- the connection loop ------------------------------------------------------------

    async def _guarded_run(self) -> None:
        try:
            await self._run()
        except Exception as exc:  # noqa: BLE001 - a bug must stop the client visibly
            log.exception("warren client failed")
            if self.state not in FINAL_STATES:
                self._finish("failed", WarrenError("internal", f"the client failed: {exc!r}"))

    async def _run(self) -> None:
        failures = 0  # consecutive attempts that did not end in a welcome
        auth_retries = 0  # new tokens fetched since the last welcome
        attempt = 0
        while not self._closing:
            try:
                token = await self._token_for_attempt(auth_retries)
            except WarrenError as exc:
                self._finish("unauthorized", exc)
                return
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            outcome = await self._attempt(url, token)
            if self._closing:
                break
            if outcome.welcomed:
                failures = auth_retries = 0
            self.error = outcome.error
            if outcome.action == "stop":
                self._finish("failed", outcome.error)
                return
            if outcome.action == "auth":
                if self._get_token is None or auth_retries >= 1:
                    self._finish("unauthorized", outcome.error)
                    return
                auth_retries += 1
                self._stale_token = True
                delay = 0.0
            elif outcome.action == "drain" and outcome.welcomed:
                delay = self.backoff.jitter() * self.backoff.drain_jitter_s
            else:
                failures += 1
                limit = self.backoff.max_failures
                if limit is not None and failures > limit:
                    self._finish("failed", WarrenError(
                        "gave_up", f"{failures} attempts failed in a row; last: {outcome.error}"))
                    return
                delay = self.backoff.delay(
                    failures, overload=outcome.action == "overload",
                    retry_after=outcome.retry_after)
            self._set_state("reconnecting", outcome.error, delay)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        if self.state not in FINAL_STATES:
            self._finish("closed", None)

    async def _token_for_attempt(self, auth_retries: int) -> str:
        """The token to connect with: the current one, or a new one from ``get_token``
        when the edge refused the current one or it has expired."""
        token = self._token
        expired = token is not None and _expires_in(token) <= 0
        if token is not None and not self._stale_token and not expired:
            return token
        if self._get_token is None:
            raise WarrenError("token_expired", "the token expired and there is no get_token")
        fresh = await self._fetch_token()
        if fresh == token and self._stale_token:
            raise WarrenError("token_invalid", "get_token returned the token the edge refused")
        if _expires_in(fresh) <= 0:
            raise WarrenError("token_expired", "get_token returned an expired token")
        self._token, self._stale_token = fresh, False
        self._took(fresh)
        return fresh

    async def _fetch_token(self) -> str:
        assert self._get_token is not None
        try:
            token = self._get_token()
            if inspect.isawaitable(token):
                token = await token
        except Exception as exc:  # noqa: BLE001 - any failure of the application's source
            raise WarrenError("token_unavailable", f"get_token failed: {exc!r}") from exc
        if not isinstance(token, str) or not token:
            raise WarrenError("token_unavailable", "get_token returned no token")
        return token

    async def _attempt(self, url: str, token: str) -> _Outcome:
        self._set_state("connecting", self.error)
        subprotocols = [Subprotocol(SUBPROTOCOL)]
        headers: dict[str, str] = {}
        if self._auth == "subprotocol":
            subprotocols.append(Subprotocol(AUTH_SUBPROTOCOL_PREFIX + token))
        else:
            headers["Authorization"] = f"Bearer {token}"
        since = self.position
        try:
            ws = await connect(
                with_since(url, since), subprotocols=subprotocols, additional_headers=headers,
                compression=None,
                open_timeout=self._open_timeout_s, max_size=self._max_size, max_queue=256,
            )
        except InvalidStatus as exc:
            return _refused(exc.response.status_code, exc.response.headers.get("Retry-After"),
                            bytes(exc.response.body))
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return _Outcome("retry", WarrenError("unreachable", f"{url}: {exc}"))
        self._ws = ws
        try:
            return await self._session(ws, since)
        finally:
            if self._closing:
                await ws.close(1000, "client closed")
            self._ws = None
            self._connected.clear()
            if self._refresh_task is not None:
                self._refresh_task.cancel()
                self._refresh_task = None
            lost = WarrenError("disconnected", "the connection closed before the edge answered")
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(lost)

    async def _session(self, ws: ClientConnection, since: float | None) -> _Outcome:
        welcomed = False
        try:
            async with asyncio.timeout(self._welcome_timeout_s):
                while not welcomed:
                    welcomed = self._first_frames(await ws.recv(), since)
            welcome = self.welcome
            assert welcome is not None
            self.stats.connects += 1
            self._connected.set()
            if welcome.recovered:
                self.stats.recovered += 1
            elif welcome.recovered is False:
                self.stats.not_recovered += 1
                log.warning("events since %s were lost: %s", since, welcome.reason)
            # Sends need not wait for the replay: the edge answers them meanwhile.
            self._set_state("recovering" if welcome.recovered else "connected", None,
                            welcome=welcome)
            self._recovered(Recovery(welcome.recovered, welcome.reason, welcome.oldest,
                                     welcome.since))
            if self._refresh_enabled and self._get_token is not None:
                self._refresh_task = asyncio.create_task(self._refresh(ws))
            while True:
                await self._frame(await ws.recv())
        except TimeoutError:
            await ws.close(1000, "no welcome")
            return _Outcome("retry", WarrenError("no_welcome", "the edge sent no welcome in time"))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else "connection lost"
            action = CLOSE_POLICY.get(code, "stop")
            error = WarrenError(f"close_{code}", reason or str(code))
            if code in OWN_FAULT_CLOSES:
                log.warning("the edge closed the socket for the application's frames: %s", error)
                self._report(error)
            return _Outcome(action, error, welcomed)

    def _first_frames(self, message: str | bytes, since: float | None) -> bool:
        """Handle a frame before ``welcome``; True once the welcome has come."""
        frame = self._parse(message)
        if frame is None:
            return False
        if frame.get("type") != "welcome" or "v" in frame:
            self._garbage(f"a {frame.get('type')!r} frame before the welcome")
            return False
        data = frame.get("data")
        try:
            assert isinstance(data, dict)
            welcome = _welcome(data, since)
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            self._garbage(f"a welcome of the wrong shape: {exc}")
            return False
        self.welcome = welcome
        self._seen.span_s = welcome.window + SEEN_MARGIN_S
        # A welcome that replays nothing starts the position afresh; after one that
        # replays, the position moves with the replayed events, then with replay.done.
        if not welcome.recovered and welcome.position is not None:
            self.position = welcome.position
        return True

    async def _frame(self, message: str | bytes) -> None:
        frame = self._parse(message)
        if frame is None:
            return
        if "v" in frame:
            try:
                event = Event.from_frame(frame)
            except ValueError as exc:
                self._garbage(str(exc))
                return
            await self._deliver(event)
            return
        kind = frame.get("type")
        if kind == "ack" or kind == "error":
            ref, data = frame.get("ref"), frame.get("data")
            answer = self._pending.get(ref) if isinstance(ref, int) else None
            if not isinstance(data, dict):
                self._garbage(f"an {kind} without data")
            elif kind == "ack" and answer is not None:
                if not answer.done():
                    answer.set_result(data)
            elif kind == "error":
                error = WarrenError(str(data.get("code")), str(data.get("message")))
                if answer is not None:
                    if not answer.done():
                        answer.set_exception(error)
                else:
                    log.warning("error frame from the edge answering no request: %s", error)
                    self._report(error)
            else:
                self._garbage(f"an ack for no request (ref {ref!r})")
        elif kind == "replay.done":
            self._replay_done(frame.get("data"))
        else:
            self._garbage(f"an unknown frame type {kind!r}")

    def _replay_done(self, data: object) -> None:
        in_band = (self.state == "connected" and isinstance(data, dict)
                   and isinstance(data.get("recovered"), bool))
        if self.state != "recovering" and not in_band:
            self._garbage("a replay.done with no replay")
            return
        if not isinstance(data, dict):
            self._garbage("a replay.done without data")
            return
        position, events = data.get("position"), data.get("events")
        if not _is_position(position):
            self._garbage("a replay.done without a position")
            return
        self.position = float(position)
        replayed = int(events) if _is_number(events) else None
        self.stats.replayed += replayed or 0
        if in_band:
            self._replayed_in_band(data, replayed)
            return
        if self.recovery is not None:
            self.recovery = replace(self.recovery, replayed=replayed)
        self._set_state("connected", None, welcome=self.welcome)

    def _replayed_in_band(self, data: dict[str, Any], replayed: int | None) -> None:
        """The edge's broker connection broke and came back while this socket stayed
        open: it replayed what was routed meanwhile (docs/protocol.md 17.5), as ordinary
        events that de-duplication sorted, and says whether that was everything."""
        recovered, reason = bool(data["recovered"]), data.get("reason")
        since, oldest = data.get("since"), data.get("oldest")
        if recovered:
            self.stats.in_band_recovered += 1
        else:
            self.stats.in_band_not_recovered += 1
            log.warning("events routed while the edge had no broker connection were lost: %s",
                        reason)
        self._recovered(Recovery(
            recovered, None if recovered else str(reason or "unknown"),
            float(oldest) if not recovered and _is_position(oldest) else None,
            float(since) if _is_position(since) else None, replayed, in_band=True,
        ))

    def _recovered(self, recovery: Recovery) -> None:
        self.recovery = recovery
        for listener in tuple(self._recovery_listeners):
            try:
                listener(recovery)
            except Exception:  # noqa: BLE001 - as in _set_state
                log.exception("recovery listener failed")

    def _parse(self, message: str | bytes) -> dict[str, Any] | None:
        if not isinstance(message, str):
            self._garbage("a binary frame")
            return None
        try:
            frame = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._garbage("a frame that is not JSON")
            return None
        if not isinstance(frame, dict):
            self._garbage("a frame that is not a JSON object")
            return None
        return frame

    async def _deliver(self, event: Event) -> None:
        seen, event_id = self._seen, event.id
        if event_id in seen.current or event_id in seen.previous:
            # Nor does it move the position: that moved past it when it first came.
            self.stats.duplicates += 1
            return
        seen.add(event_id, event.ts)
        self.position = event.ts
        self.last_event_id = event_id
        routed = False
        for subscription in self._subscriptions:
            if subscription.types is None or event.type in subscription.types:
                routed = True
                await subscription._put(event)
        if routed:
            self.stats.events += 1
        else:
            self.stats.unrouted += 1

    # -- token refresh ------------------------------------------------------------------

    async def _refresh(self, ws: ClientConnection) -> None:
        """Replace the connection's token ahead of its expiry (``auth.refresh``)."""
        while True:
            assert self._token is not None
            remaining = _expires_in(self._token)
            if not math.isfinite(remaining):
                return  # an opaque token: the edge's 4001 will tell
            await asyncio.sleep(refresh_delay(remaining))
            try:
                token = await self._fetch_token()
                answer = await self._request({"type": "auth.refresh", "data": {"token": token}})
            except WarrenError as exc:
                if exc.code in {"unknown_type", "invalid_frame"}:
                    log.info("the edge does not refresh tokens in band: reconnecting at expiry")
                    return
                if exc.code == "disconnected":
                    return
                log.warning("token refresh failed: %s", exc)
                self._report(exc)
                if _expires_in(self._token) < 2:
                    return  # the edge closes with 4001 and the client gets a token then
                await asyncio.sleep(_expires_in(self._token) / 2)
                continue
            if self._ws is not ws:
                return
            self._token = token
            welcome = self.welcome
            groups, roles = answer.get("groups"), answer.get("roles")
            if welcome is not None and isinstance(groups, list) and isinstance(roles, list):
                # The new token's groups are what the socket receives from the ack on.
                self.welcome = replace(welcome, groups=tuple(groups), roles=tuple(roles))
            log.debug("token refreshed; it expires at %s", answer.get("exp"))
            self._took(token)

    # -- state --------------------------------------------------------------------------

    def _set_state(
        self, state: State, error: WarrenError | None, delay: float | None = None, *,
        welcome: Welcome | None = None,
    ) -> None:
        self.state = state
        change = StateChange(state, error, delay, welcome)
        for listener in tuple(self._state_listeners):
            try:
                listener(change)
            except Exception:  # noqa: BLE001 - the application's callback must not stop the client
                log.exception("state listener failed")
        waiters, self._state_waiters = self._state_waiters, []
        for states, waiter in waiters:
            if state in states or state in FINAL_STATES:
                if not waiter.done():
                    waiter.set_result(change)
            else:
                self._state_waiters.append((states, waiter))

    def _finish(self, state: State, error: WarrenError | None) -> None:
        self.error = error
        if error is not None:
            log.warning("warren client stopped (%s): %s", state, error)
        self._set_state(state, error)
        self._stopped.set()
        for subscription in self._subscriptions:
            subscription._end(error)
        self._subscriptions.clear()
        final = self._final_error()
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(final)

    def _final_error(self) -> WarrenError:
        if self.state == "closed" or self.error is None:
            return WarrenError("closed", "the client was closed")
        return self.error

    def _unsubscribe(self, subscription: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    def _garbage(self, what: str) -> None:
        self.stats.garbage_frames += 1
        log.warning("garbage frame from the edge: %s", what)
        self._report(WarrenError("garbage_frame", what))

    def _took(self, token: str) -> None:
        for listener in tuple(self._token_listeners):
            try:
                listener(token)
            except Exception:  # noqa: BLE001 - as in _set_state
                log.exception("token listener failed")

    def _report(self, error: WarrenError) -> None:
        for listener in tuple(self._error_listeners):
            try:
                listener(error)
            except Exception:  # noqa: BLE001 - as in _set_state
                log.exception("error listener failed")


#: The name the JavaScript client's users know it by.
WarrenClient = Client


def refresh_delay(remaining_s: float) -> float:
    """Seconds until a token with ``remaining_s`` to live is refreshed: at 80 % of its
    remaining life or 60 s before it expires, whichever is earlier, but never before half
    of it, so that short tokens are not refreshed back to back."""
    return max(remaining_s / 2, min(remaining_s * 0.8, remaining_s - 60))


def _expires_in(token: str) -> float:
    """Seconds until the token's ``exp`` (infinite when it carries none that is readable).

    The client cannot verify the signature and does not try: it reads ``exp`` only to
    know when to ask for a new token."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return math.inf
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return math.inf
    return float(exp) - time.time()


def with_since(url: str, position: float | None) -> str:
    """``url`` with ``?since=<position>`` (docs/protocol.md 17.3), replacing one it has.

    Written in fixed point to the microsecond, rounded down: the edge takes up to nine
    decimals and no exponent, and a position a little early only replays a little more."""
    if position is None:
        return url
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k != "since"]
    query.append(("since", str(Decimal(position).quantize(MICROSECOND, rounding=ROUND_FLOOR))))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _is_number(value: object) -> TypeGuard[int | float]:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_position(value: object) -> TypeGuard[int | float]:
    return _is_number(value) and math.isfinite(value) and value >= 0


def _welcome(data: dict[str, Any], since: float | None) -> Welcome:
    """The :class:`Welcome` of a welcome frame's ``data``; ``since``: the position the
    client connected with. Raises ``KeyError``/``TypeError``/``ValueError`` on a field
    of the wrong form."""
    position, window = data.get("position"), data.get("window", DEFAULT_WINDOW_S)
    if position is not None and not _is_position(position):
        raise ValueError("a welcome whose position is not a position")
    if not _is_position(window):
        raise ValueError("a welcome whose window is not a number of seconds")
    recovered, reason, oldest = data.get("recovered"), data.get("reason"), data.get("oldest")
    if recovered is not None and not isinstance(recovered, bool):
        raise ValueError("a welcome whose recovered is not a boolean")
    if oldest is not None and not _is_position(oldest):
        raise ValueError("a welcome whose oldest is not a position")
    if since is None:
        recovered = reason = oldest = None
    elif recovered is None:
        # An edge that does not recover: whatever was missed is lost.
        recovered, reason = False, "unsupported"
    return Welcome(
        str(data["user"]), tuple(data.get("groups") or ()), tuple(data.get("roles") or ()),
        str(data.get("edge", "")),
        position=None if position is None else float(position), window=float(window),
        recovered=recovered, reason=None if recovered or reason is None else str(reason),
        oldest=None if oldest is None else float(oldest), since=since,
    )


def _refused(status: int, retry_after: str | None, body: bytes) -> _Outcome:
    """The outcome of an upgrade the edge refused (docs/protocol.md 5.1)."""
    try:
        parsed = orjson.loads(body)
        code = str(parsed["error"])
        message = str(parsed.get("message", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        code, message = f"http_{status}", body[:200].decode(errors="replace")
    error = WarrenError(code, message or f"HTTP {status}")
    if status == 401:
        return _Outcome("auth", error)
    if status == 503:
        try:
            wait = max(0.0, float(retry_after)) if retry_after else 0.0
        except ValueError:
            wait = 0.0
        return _Outcome("overload", error, retry_after=wait if math.isfinite(wait) else 0.0)
    if status >= 500:
        return _Outcome("retry", error)
    return _Outcome("stop", error)  # 403 origin, 429 too_many_sockets, 4xx: trying again repeats it


async def _first_of(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
