"""In-band recovery of what the open sockets missed while the edge's broker connection
was away (docs/protocol.md 17.5).

The edge keeps its sockets open when the connection breaks; the events routed until it
has a queue again, with every key bound to it, never reach it. So:

1. :meth:`GapReplay.hold`, as soon as the loss is noticed (and again at the
   reconnection, for sockets welcomed during the outage), has every live socket hold
   its live events back, and remember where its replay is to start: the ``ts`` of the
   last event the edge fanned out before the loss, or the socket's own position on the
   edge if that is later.
2. :meth:`GapReplay.replay`, once every key is bound again, reads what each held socket
   missed from the history stream, as a recovery (17.3): all of them handed to the
   ``HistoryReader`` in one step, so that they share its next pass, however many
   sockets the edge holds. Each socket then writes its replay, ``replay.done``, and the
   live events it held back.

A replay that cannot be read is read again a few times (the stream's leader may be
moving on a cluster), then its socket is closed with 1013 and reconnects with its own
position; if the connection broke again meanwhile, the socket stays held, and its replay
starts again after the next reconnection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol, runtime_checkable

from services.ws_edge.errors import CloseCode
from services.ws_edge.history import HistoryUnavailable, Recovery, Request
from services.ws_edge.hub import Hub
from services.ws_edge.metrics import EdgeMetrics

log = logging.getLogger(__name__)

#: The waits before reading a replay again when the stream could not be read although the
#: connection held (on a cluster, the stream's leader may be moving): capped exponential
#: backoff; after the last, the sockets still waiting are closed with 1013.
RETRY_DELAYS_S: Final = (0.5, 1.0, 2.0, 4.0, 5.0)


@runtime_checkable
class Resumable(Protocol):
    """A socket, as the in-band replay sees it (services/ws_edge/handlers/websocket.py)."""

    def gap_begins(self, delivered: float | None) -> bool:
        """Hold live events back from now on, to replay from the later of ``delivered``
        (the ``ts`` of the last event the edge fanned out, if any) and the socket's own
        position. False if the socket does not take part: closed, or held already."""
        ...

    def gap_replay(self, rebound_at: float) -> Recovery | None:
        """Its keys are bound again since ``rebound_at``: the request that replays what
        the socket missed; None if it waits for no replay, or if there is nothing to
        read (history is off: the socket says so and goes live)."""
        ...

    def close_with(self, code: int, reason: str) -> None: ...


class Reader(Protocol):
    """Where the replays are read: :class:`services.ws_edge.history.HistoryReader`."""

    async def read_all(self, requests: Sequence[Request]) -> list[BaseException | None]: ...


class GapReplay:
    """Holds the edge's live sockets while its broker connection is away, then replays
    what each one missed, all in the same passes over the stream."""

    def __init__(
        self,
        hub: Hub,
        reader: Reader,
        metrics: EdgeMetrics,
        delivered: Callable[[], float | None],
        connected: Callable[[], bool],
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self._hub = hub
        self._reader = reader
        self._metrics = metrics
        self._delivered = delivered
        self._connected = connected
        self._retry_delays_s = tuple(retry_delays_s)
        self._losses = 0  # hold() calls: a replay that fails after one is tried again
        self._unbound: frozenset[str] = frozenset()
        self._runner: asyncio.Task[None] | None = None
        self._again = False

    def hold(self) -> int:
        """The broker connection broke (or came back): hold back the live events of every
        socket that receives them live now; return how many."""
        self._losses += 1
        delivered = self._delivered()
        held = 0
        for subscriber in self._hub.subscribed():
            if isinstance(subscriber, Resumable) and subscriber.gap_begins(delivered):
                held += 1
        if held:
            log.info("live events held back until the broker connection is back",
                     extra={"sockets": held, "delivered_ts": delivered})
        return held

    def replay(self, unbound: frozenset[str]) -> None:
        """Every held key is bound again, except ``unbound``: replay each held socket's
        gap, in the background (after the replay running now, if one is)."""
        self._unbound = unbound
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        else:
            self._again = True

    async def idle(self) -> None:
        """Return once no replay runs (at once if none does)."""
        while (runner := self._runner) is not None:
            await asyncio.shield(runner)

    async def close(self) -> None:
        """Stop replaying (the edge is stopping: its sockets are closed with 1001)."""
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _run(self) -> None:
        try:
            attempt = 0
            while True:
                self._again = False
                losses = self._losses
                last = attempt == len(self._retry_delays_s)
                waiting = await self._replay(self._unbound, last=last)
                if not self._again:
                    if not waiting or self._losses != losses or not self._connected():
                        return  # done; or lost again, and the next rebind replays them
                    await asyncio.sleep(self._retry_delays_s[attempt])
                    attempt += 1
                    if not self._again and self._losses != losses:
                        return  # lost meanwhile: not before the next rebind
                if self._again:
                    attempt = 0  # a newer rebind: every held socket, afresh
        except Exception:
            log.exception("in-band replay failed")
        finally:
            self._runner = None

    async def _replay(self, unbound: frozenset[str], *, last: bool) -> int:
        """Read the replay of every held socket (closing those whose keys are in
        ``unbound``); return how many are still held because theirs could not be read.
        ``last``: close those instead, unless the connection broke again."""
        losses = self._losses
        rebound_at = time.time()
        sockets: list[Resumable] = []
        requests: list[Recovery] = []
        for holder in self._hub.held():
            if not isinstance(holder, Resumable):
                continue
            request = holder.gap_replay(rebound_at)
            if request is None:
                continue
            if request.keys & unbound:
                # Its replay would be followed by no live events of those keys.
                self._fail(holder, "broker unavailable, retry later")
                continue
            sockets.append(holder)
            requests.append(request)
        if not requests:
            return 0
        try:
            failures = await self._reader.read_all(requests)
        except HistoryUnavailable as exc:
            failures = [exc] * len(requests)
        lost_again = self._losses != losses or not self._connected()
        waiting = closed = 0
        for socket, failure in zip(sockets, failures):
            if failure is None:
                continue
            if last and not lost_again:
                self._fail(socket, "history unavailable, retry later")
                closed += 1
            else:
                waiting += 1  # still held: read again later, or after the next rebind
        if waiting or closed:
            log.warning("in-band replay not read", extra={
                "sockets": len(requests), "waiting": waiting, "closed": closed,
                "lost_again": lost_again, "error": repr(next(f for f in failures if f)),
            })
        else:
            log.info("in-band replay done", extra={"sockets": len(requests),
                                                    "rebound_at": rebound_at})
        return waiting

    def _fail(self, socket: Resumable, reason: str) -> None:
        self._metrics.inband_recoveries.labels("failed").inc()
        socket.close_with(CloseCode.TRY_AGAIN_LATER, reason)
