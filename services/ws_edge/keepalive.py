"""A one-way heartbeat for every socket of the edge, from one timer wheel; the kernel
finds the peers that are gone.

Every ``interval_s`` each socket gets an unsolicited pong with no payload (RFC 6455
5.5.3: "A Pong frame MAY be sent unsolicited. This serves as a unidirectional
heartbeat. A response to an unsolicited Pong frame is not expected."). Browsers and
WebSocket libraries ignore it; it keeps the idle timers of proxies and load balancers
from closing a quiet connection. Nothing comes back, so the edge reads nothing: reading
each pong through Tornado's frame reader cost several times as much as writing the
heartbeat alone (bench/README.md, *The edge at the floor*).

A peer that vanished (no FIN, no RST) is found by the kernel, at no cost to the loop:
``admit`` sets ``TCP_USER_TIMEOUT`` on the socket to ``timeout_s``. The heartbeat puts
data on the wire every interval; a peer that is gone leaves it unacknowledged, and the
kernel aborts the connection once sent data has waited ``timeout_s`` for an
acknowledgement. Tornado then sees the error and the socket closes as any other
(``on_close``). So a vanished peer is let go at most about ``interval_s + timeout_s``
after it was last heard. Where the option does not exist (not Linux), ``start`` says so
in the log and only the heartbeat runs: such a connection then lasts until the system's
own retransmissions give up. Not tested end to end: that needs a peer whose packets are
dropped (tests/integration/test_handshake.py says why).

A socket's first beat comes at a random point of its first interval (on the wheel's
clock), so that sockets opened together (after a restart, say) do not all get theirs at
the same moment. The wheel has a slot per tick (a twentieth of the interval), and a
socket waits in the slot of its next beat, which it names itself when visited: a tick
visits only the sockets due in it, about one interval's share of them, and each socket
once per interval. No more than ``VISITS_PER_TURN`` sockets are visited in one turn of
the event loop: a slot larger than that is worked through over several turns, so a
delivery never waits behind the whole slot. A beat is at most one tick late, plus
however long a busy loop delays it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections import deque
from typing import Final

from services.ws_edge.hub import Subscriber

log = logging.getLogger(__name__)

TICKS_PER_INTERVAL: Final = 20
VISITS_PER_TURN: Final = 256
#: The kernel's option, where it has one (Linux 2.6.37 and later).
USER_TIMEOUT: Final[int | None] = getattr(socket, "TCP_USER_TIMEOUT", None)


class Keepalive:
    def __init__(self, interval_s: float, timeout_s: float) -> None:
        self.interval_s = interval_s
        # No timeout (0) means the interval. A longer one is only more patient: the
        # kernel keeps the connection while its peer may still answer.
        self.timeout_s = timeout_s or interval_s
        self.tick_s = interval_s / TICKS_PER_INTERVAL
        # A socket is never due further ahead than one interval, so the wheel needs one
        # slot per tick of it, and one more for the slot being worked on.
        slots = math.ceil(interval_s / self.tick_s) + 2 if interval_s > 0 else 1
        self._wheel: list[dict[Subscriber, None]] = [{} for _ in range(slots)]
        self._slot_of: dict[Subscriber, int] = {}
        self._ticks = 0  # ticks done since start: the wheel's current slot, unwrapped
        self._origin = 0.0  # loop time of tick 0
        # Sockets taken from the wheel, each with its slot's time: a socket is told that
        # time, not the moment it is visited, so visits that run late (a busy loop) do
        # not bunch its next beats together with other sockets' (it keeps its place).
        self._visiting: deque[tuple[Subscriber, float]] = deque()
        self._visit_queued = False  # one visit callback at a time: one per loop turn
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    @property
    def user_timeout_ms(self) -> int:
        """``TCP_USER_TIMEOUT`` for each socket admitted (at least 1: 0 is the kernel's
        own default, not a timeout)."""
        return max(1, round(self.timeout_s * 1000))

    def start(self) -> None:
        """Start ticking; an interval of 0 means no heartbeat and no user timeout."""
        if self.enabled and self._timer is None:
            if USER_TIMEOUT is None:
                log.warning("TCP_USER_TIMEOUT is not available on this system: the edge "
                            "sends its heartbeat, but leaves vanished peers to the kernel's "
                            "retransmission limit instead of WARREN_EDGE_PING_TIMEOUT_S")
            self._loop = asyncio.get_running_loop()
            self._origin = self._loop.time()
            self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def admit(self, subscriber: Subscriber, sock: socket.socket | None) -> None:
        """A socket is open: its kernel gives up on a silent peer after ``timeout_s``,
        and its first beat comes at a random point of its first interval."""
        if not self.enabled or self._loop is None:
            return
        if sock is not None and USER_TIMEOUT is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, USER_TIMEOUT, self.user_timeout_ms)
            except OSError:
                # Already reset by the peer (the read side closes the handler), or not a
                # TCP socket: the heartbeat alone still serves it.
                log.debug("TCP_USER_TIMEOUT not set", exc_info=True)
        # On the wheel's clock, not the loop's: while the loop is too busy for the ticks
        # to keep up, the wheel lags behind, and a first beat drawn from the loop's time
        # could fall past its last slot, where it would be put together with every other
        # socket opened meanwhile.
        now = self._origin + self._ticks * self.tick_s
        self.watch(subscriber, now + random.random() * self.interval_s)

    def watch(self, subscriber: Subscriber, due: float) -> None:
        """Visit ``subscriber`` at loop time ``due`` (or the first tick after it)."""
        if not self.enabled or self._loop is None:
            return
        self.unwatch(subscriber)
        self._place(subscriber, due)

    def _place(self, subscriber: Subscriber, due: float) -> None:
        """Put a socket that is in no slot into the slot of ``due``."""
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
        # Every socket of the edge passes here once an interval: names are bound once.
        visiting, slot_of, place = self._visiting, self._slot_of, self._place
        interval_s = self.interval_s
        for _ in range(min(VISITS_PER_TURN, len(visiting))):
            subscriber, at = visiting.popleft()
            if subscriber in slot_of:
                continue  # watched again meanwhile, at a time of its own
            due = subscriber.keepalive(at, interval_s)
            if due is not None and subscriber not in slot_of:
                place(subscriber, due)
        self._queue_visit()
