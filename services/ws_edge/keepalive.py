"""Keepalive pings for every socket of the edge, from one timer.

Tornado's own pings (``websocket_ping_interval``) run one task per connection, about
1 KB each. This timer does the same job for all of them. On each tick, every socket
that has had its ``welcome`` decides from its own clock whether to send its next ping
or to give up on the last one: as with Tornado, each socket is pinged every
``interval_s`` and closed with ``1000 ping timed out`` when no pong has come
``timeout_s`` after a ping. A socket's first ping comes at a random point of its
first interval, so that sockets opened together (after a restart, say) are not all
pinged, and do not all answer, at the same moment. Pings and timeouts are at most
one tick late: a twentieth of the interval or a quarter of the timeout, whichever
is less.
"""

from __future__ import annotations

import asyncio
from typing import Final

from services.ws_edge.hub import Hub

TICKS_PER_INTERVAL: Final = 20
TICKS_PER_TIMEOUT: Final = 4


class Keepalive:
    def __init__(self, hub: Hub, interval_s: float, timeout_s: float) -> None:
        self._hub = hub
        self.interval_s = interval_s
        # As Tornado: no timeout (0) means the interval, and it can be no longer than that.
        self.timeout_s = min(timeout_s or interval_s, interval_s)
        self.tick_s = min(interval_s / TICKS_PER_INTERVAL, self.timeout_s / TICKS_PER_TIMEOUT)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start ticking; an interval of 0 means no pings at all."""
        if self.interval_s > 0 and self._timer is None:
            self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        now = asyncio.get_running_loop().time()
        for subscriber in self._hub.subscribers():
            subscriber.keepalive(now, self.interval_s, self.timeout_s)
        self._schedule()
