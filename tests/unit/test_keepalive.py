"""The edge-wide keepalive wheel, driven against fake sockets on short intervals.

What a socket does when visited (ping, or close after an unanswered one) is covered over
a real connection in tests/integration/test_handshake.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from services.ws_edge.keepalive import VISITS_PER_TURN, Keepalive

WAIT = 5.0


class Turns:
    """Counts turns of the event loop, so a test can tell which visits shared one."""

    def __init__(self) -> None:
        self.now = 0
        self._task = asyncio.get_running_loop().create_task(self._count())

    async def _count(self) -> None:
        while True:
            self.now += 1
            await asyncio.sleep(0)

    def stop(self) -> None:
        self._task.cancel()


class VisitedSocket:
    """Asks to be visited again one interval later, and records each visit."""

    def __init__(self, turns: Turns | None = None, visits_wanted: int = 1) -> None:
        self.visits: list[float] = []
        self.turns: list[int] = []
        self.done = asyncio.Event()
        self._turns = turns
        self._wanted = visits_wanted
        self.closed = False

    def send_frame(self, frame: bytes) -> bool:
        return True

    def close_with(self, code: int, reason: str) -> None:
        pass

    def keepalive(self, now: float, interval_s: float, timeout_s: float) -> float | None:
        self.visits.append(now)
        if self._turns is not None:
            self.turns.append(self._turns.now)
        if len(self.visits) >= self._wanted:
            self.done.set()
        return None if self.closed else now + interval_s


async def test_a_socket_is_visited_when_due_and_then_every_interval() -> None:
    keepalive = Keepalive(interval_s=0.1, timeout_s=0.1)
    keepalive.start()
    loop = asyncio.get_running_loop()
    socket = VisitedSocket(visits_wanted=3)
    due = loop.time() + 0.05
    keepalive.watch(socket, due)
    try:
        await asyncio.wait_for(socket.done.wait(), WAIT)
    finally:
        keepalive.stop()
    first, second, third = socket.visits[:3]
    assert first >= due and first - due <= keepalive.tick_s + 0.05
    assert second - first >= 0.1 - 1e-9 and third - second >= 0.1 - 1e-9


async def test_a_socket_not_watched_or_unwatched_is_never_visited() -> None:
    keepalive = Keepalive(interval_s=0.04, timeout_s=0.04)
    keepalive.start()
    now = asyncio.get_running_loop().time()
    watched, unwatched, never = VisitedSocket(visits_wanted=3), VisitedSocket(), VisitedSocket()
    keepalive.watch(watched, now)
    keepalive.watch(unwatched, now + 0.01)
    keepalive.unwatch(unwatched)
    try:
        await asyncio.wait_for(watched.done.wait(), WAIT)
    finally:
        keepalive.stop()
    assert unwatched.visits == [] and never.visits == [] and len(keepalive) == 1


async def test_a_closed_socket_leaves_the_wheel() -> None:
    keepalive = Keepalive(interval_s=0.04, timeout_s=0.04)
    keepalive.start()
    socket = VisitedSocket()
    socket.closed = True
    keepalive.watch(socket, asyncio.get_running_loop().time())
    try:
        await asyncio.wait_for(socket.done.wait(), WAIT)
    finally:
        keepalive.stop()
    assert len(keepalive) == 0


class CountedKeepalive(Keepalive):
    """Records how many sockets each tick takes from the wheel."""

    def __init__(self, interval_s: float, timeout_s: float) -> None:
        super().__init__(interval_s, timeout_s)
        self.taken: list[int] = []

    def _tick(self) -> None:
        before = len(self)
        super()._tick()
        self.taken.append(before - len(self))


async def test_each_tick_takes_its_share_of_the_sockets_not_all_of_them() -> None:
    """10,000 sockets spread over the interval: a tick takes the sockets due in it,
    about a twentieth of them, and each socket is visited once per interval."""
    keepalive = CountedKeepalive(interval_s=0.4, timeout_s=0.4)
    ticks = round(0.4 / keepalive.tick_s)
    keepalive.start()
    start = asyncio.get_running_loop().time()
    spread = [VisitedSocket(visits_wanted=2) for _ in range(10_000)]
    for n, socket in enumerate(spread):
        keepalive.watch(socket, start + (n % ticks + 1) * keepalive.tick_s)
    try:
        for socket in spread:
            await asyncio.wait_for(socket.done.wait(), WAIT)
    finally:
        keepalive.stop()
    assert max(keepalive.taken) <= len(spread) // ticks
    assert sum(keepalive.taken) >= 2 * len(spread)
    assert all(s.visits[1] - s.visits[0] >= 0.4 - 1e-9 for s in spread)


async def test_a_crowded_tick_is_worked_through_over_several_turns() -> None:
    """Sockets all due at once are visited at most VISITS_PER_TURN per turn of the loop,
    so a delivery never waits behind them all."""
    turns = Turns()
    keepalive = Keepalive(interval_s=0.4, timeout_s=0.4)
    keepalive.start()
    start = asyncio.get_running_loop().time()
    crowd = [VisitedSocket(turns) for _ in range(10 * VISITS_PER_TURN + 7)]
    for socket in crowd:
        keepalive.watch(socket, start + 0.5 * keepalive.tick_s)
    try:
        for socket in crowd:
            await asyncio.wait_for(socket.done.wait(), WAIT)
    finally:
        keepalive.stop()
        turns.stop()
    per_turn = Counter(turn for socket in crowd for turn in socket.turns[:1])
    assert max(per_turn.values()) <= VISITS_PER_TURN
    assert len(per_turn) >= 11


@pytest.mark.parametrize(
    ("interval", "timeout", "effective", "tick"),
    [(20.0, 20.0, 20.0, 1.0), (20.0, 2.0, 2.0, 0.5), (20.0, 0.0, 20.0, 1.0),
     (20.0, 60.0, 20.0, 1.0)],
)
def test_timeout_is_at_most_the_interval_and_zero_means_the_interval(
    interval: float, timeout: float, effective: float, tick: float
) -> None:
    keepalive = Keepalive(interval, timeout)
    assert (keepalive.timeout_s, keepalive.tick_s) == (effective, tick)


async def test_no_interval_means_no_wheel() -> None:
    keepalive = Keepalive(0.0, 0.0)
    keepalive.start()
    keepalive.watch(VisitedSocket(), 0.0)
    assert len(keepalive) == 0 and not keepalive.enabled
