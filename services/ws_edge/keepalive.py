"""Keepalive pings for every socket of the edge, from one timer wheel.

Tornado's own pings (``websocket_ping_interval``) run one task per connection, about
1 KB each. This wheel does the same job for all of them. As with Tornado, each socket
is pinged every ``interval_s`` and closed with ``1000 ping timed out`` when no pong has
come ``timeout_s`` after a ping. A socket's first ping comes at a random point of its
first interval, so that sockets opened together (after a restart, say) are not all
pinged, and do not all answer, at the same moment.

A socket is visited only when it has something to do: the wheel has a slot per tick,
and a socket waits in the slot of its next ping or of its ping's deadline, which it
names itself when visited. So a tick visits only the sockets due in it (about one
interval's share of them, thanks to the random first ping), an idle edge does nearly
nothing between pings, and no more than ``VISITS_PER_TURN`` sockets are visited in one
turn of the event loop: a slot larger than that is worked through over several turns,
so a delivery never waits behind the whole slot. Pings and timeouts are at most one
tick late (a twentieth of the interval or a quarter of the timeout, whichever is less),
plus however long a busy loop delays the visit.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Final

from services.ws_edge.hub import Subscriber

TICKS_PER_INTERVAL: Final = 20
TICKS_PER_TIMEOUT: Final = 4
VISITS_PER_TURN: Final = 256


class Keepalive:
    def __init__(self, interval_s: float, timeout_s: float) -> None:
        self.interval_s = interval_s
        # As Tornado: no timeout (0) means the interval, and it can be no longer than that.
        self.timeout_s = min(timeout_s or interval_s, interval_s)
        self.tick_s = min(interval_s / TICKS_PER_INTERVAL, self.timeout_s / TICKS_PER_TIMEOUT)
        # A socket is never due further ahead than one interval, so the wheel needs one
        # slot per tick of it, and one more for the slot being worked on.
        slots = math.ceil(interval_s / self.tick_s) + 2 if interval_s > 0 else 1
        self._wheel: list[dict[Subscriber, None]] = [{} for _ in range(slots)]
        self._slot_of: dict[Subscriber, int] = {}
        self._ticks = 0  # ticks done since start: the wheel's current slot, unwrapped
        self._origin = 0.0  # loop time of tick 0
        # Sockets taken from the wheel, each with its slot's time: a socket is told that
        # time, not the moment it is visited, so visits that run late (a busy loop) do
        # not bunch its next pings together with other sockets' (it keeps its place).
        self._visiting: deque[tuple[Subscriber, float]] = deque()
        self._visit_queued = False  # one visit callback at a time: one per loop turn
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def start(self) -> None:
        """Start ticking; an interval of 0 means no pings at all."""
        if self.enabled and self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._origin = self._loop.time()
            self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def watch(self, subscriber: Subscriber, due: float) -> None:
        """Visit ``subscriber`` at loop time ``due`` (or the first tick after it)."""
        if not self.enabled or self._loop is None:
            return
        self.unwatch(subscriber)
        # (Less a rounding error: a socket due exactly one interval after its slot's
        # time goes to the slot one interval on, not the one after.)
        tick = max(self._ticks + 1, math.ceil((due - self._origin) / self.tick_s - 1e-9))
        slot = min(tick, self._ticks + len(self._wheel) - 1) % len(self._wheel)
        self._wheel[slot][subscriber] = None
        self._slot_of[subscriber] = slot

    def unwatch(self, subscriber: Subscriber) -> None:
        """The socket closed: it is not visited again."""
        slot = self._slot_of.pop(subscriber, None)
        if slot is not None:
            self._wheel[slot].pop(subscriber, None)

    def _schedule(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_at(
            self._origin + (self._ticks + 1) * self.tick_s, self._tick
        )

    def _tick(self) -> None:
        self._ticks += 1
        slot = self._ticks % len(self._wheel)
        due, self._wheel[slot] = self._wheel[slot], {}
        for subscriber in due:
            del self._slot_of[subscriber]
        at = self._origin + self._ticks * self.tick_s
        self._visiting.extend((subscriber, at) for subscriber in due)
        self._schedule()
        self._queue_visit()

    def _queue_visit(self) -> None:
        if self._visiting and not self._visit_queued:
            assert self._loop is not None
            self._visit_queued = True
            self._loop.call_soon(self._visit)

    def _visit(self) -> None:
        """Visit up to ``VISITS_PER_TURN`` sockets, and the rest in later turns."""
        assert self._loop is not None
        self._visit_queued = False
        visiting = self._visiting
        for _ in range(min(VISITS_PER_TURN, len(visiting))):
            subscriber, at = visiting.popleft()
            if subscriber in self._slot_of:
                continue  # watched again meanwhile, at a time of its own
            due = subscriber.keepalive(at, self.interval_s, self.timeout_s)
            if due is not None:
                self.watch(subscriber, due)
        self._queue_visit()
