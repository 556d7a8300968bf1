"""The edge-wide heartbeat wheel, driven against fake sockets on short intervals, and the
kernel's user timeout it sets on a real TCP socket.

What a socket does when visited (the heartbeat, an unsolicited pong) is covered over a
real connection in tests/integration/test_handshake.py. That the kernel then drops a
peer that stopped acknowledging is not tested: it needs packets dropped.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from services.ws_edge.keepalive import (
    TICKS_PER_INTERVAL,
    USER_TIMEOUT,
    VISITS_PER_TURN,
    Keepalive,
)

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

    def keepalive(self, now: float, interval_s: float) -> float | None:
        self.visits.append(now)
        if self._turns is not None:
            self.turns.append(self._turns.now)
        if len(self.visits) >= self._wanted:
            self.done.set()
        return None if self.closed else now + interval_s


async def test_a_socket_is_visited_when_due_and_then_once_every_interval() -> None:
    keepalive = Keepalive(interval_s=0.3, timeout_s=0.3)
    keepalive.start()
    loop = asyncio.get_running_loop()
    visited = VisitedSocket(visits_wanted=3)
    due = loop.time() + 0.05
    keepalive.watch(visited, due)
    try:
        await asyncio.wait_for(visited.done.wait(), WAIT)
    finally:
        keepalive.stop()
    # A visit is told its slot's time, not the moment it ran: exact, however busy the loop.
    first, second, third = visited.visits[:3]
    assert due <= first < due + keepalive.tick_s
    assert second - first == pytest.approx(0.3) and third - second == pytest.approx(0.3)


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
    visited = VisitedSocket()
    visited.closed = True
    keepalive.watch(visited, asyncio.get_running_loop().time())
    try:
        await asyncio.wait_for(visited.done.wait(), WAIT)
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
    for n, visited in enumerate(spread):
        keepalive.watch(visited, start + (n % ticks + 1) * keepalive.tick_s)
    try:
        for visited in spread:
            await asyncio.wait_for(visited.done.wait(), WAIT)
    finally:
        keepalive.stop()
    assert max(keepalive.taken) <= len(spread) // ticks
    assert sum(keepalive.taken) >= 2 * len(spread)
    assert all(s.visits[1] - s.visits[0] == pytest.approx(0.4) for s in spread)


async def test_a_crowded_tick_is_worked_through_over_several_turns() -> None:
    """Sockets all due at once are visited at most VISITS_PER_TURN per turn of the loop,
    so a delivery never waits behind them all."""
    turns = Turns()
    keepalive = Keepalive(interval_s=0.4, timeout_s=0.4)
    keepalive.start()
    start = asyncio.get_running_loop().time()
    crowd = [VisitedSocket(turns) for _ in range(10 * VISITS_PER_TURN + 7)]
    for visited in crowd:
        keepalive.watch(visited, start + 0.5 * keepalive.tick_s)
    try:
        for visited in crowd:
            await asyncio.wait_for(visited.done.wait(), WAIT)
    finally:
        keepalive.stop()
        turns.stop()
    per_turn = Counter(turn for visited in crowd for turn in visited.turns[:1])
    assert max(per_turn.values()) <= VISITS_PER_TURN
    assert len(per_turn) >= 11


async def admit_storm(keepalive: Keepalive, sockets: int = 2000) -> list[VisitedSocket]:
    """Admit ``sockets`` at once, as a reconnect storm opens them; each once visited."""
    storm = [VisitedSocket() for _ in range(sockets)]
    for visited in storm:
        keepalive.admit(visited, None)
    try:
        for visited in storm:
            await asyncio.wait_for(visited.done.wait(), WAIT)
    finally:
        keepalive.stop()
    return storm


async def test_admitted_sockets_get_their_first_beat_spread_over_the_first_interval() -> None:
    """Sockets opened together (a reconnect storm) do not all get their beat at once."""
    keepalive = CountedKeepalive(interval_s=0.4, timeout_s=0.4)
    keepalive.start()
    start = asyncio.get_running_loop().time()
    storm = await admit_storm(keepalive)
    firsts = [visited.visits[0] for visited in storm]
    assert all(start < first <= start + 0.4 + keepalive.tick_s + 1e-9 for first in firsts)
    assert len(set(firsts)) >= TICKS_PER_INTERVAL // 2
    assert max(keepalive.taken) < len(storm) // 4


async def test_sockets_admitted_while_the_wheel_lags_behind_the_loop_are_spread_too() -> None:
    """A busy loop delays the ticks, so the wheel falls behind the loop's clock; sockets
    opened meanwhile still get their first beats spread over an interval of the wheel,
    not all put in its last slot."""
    keepalive = CountedKeepalive(interval_s=0.4, timeout_s=0.4)
    keepalive.start()
    # As if the loop had been busy for 0.5 s, longer than the interval: the wheel's
    # ticks are due since then, and come one turn after another to catch up.
    keepalive._origin -= 0.5
    storm = await admit_storm(keepalive)
    assert len({visited.visits[0] for visited in storm}) >= TICKS_PER_INTERVAL // 2
    assert max(keepalive.taken) < len(storm) // 4


@contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Both ends of a loopback TCP connection: (the accepted one, the connecting one)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                yield accepted, client


@pytest.mark.skipif(USER_TIMEOUT is None, reason="TCP_USER_TIMEOUT is Linux's")
@pytest.mark.parametrize(("interval", "timeout", "expected_ms"),
                         [(20.0, 7.5, 7500), (20.0, 0.0, 20000), (5.0, 60.0, 60000)])
async def test_admit_sets_the_kernel_user_timeout_zero_meaning_the_interval(
    interval: float, timeout: float, expected_ms: int
) -> None:
    keepalive = Keepalive(interval, timeout)
    keepalive.start()
    try:
        with tcp_pair() as (accepted, client):
            keepalive.admit(VisitedSocket(), accepted)
            assert USER_TIMEOUT is not None
            assert accepted.getsockopt(socket.IPPROTO_TCP, USER_TIMEOUT) == expected_ms
            assert client.getsockopt(socket.IPPROTO_TCP, USER_TIMEOUT) == 0
            assert len(keepalive) == 1
    finally:
        keepalive.stop()


async def test_a_socket_without_the_option_still_gets_its_heartbeat() -> None:
    """A socket that takes no TCP option (here a Unix one) is admitted all the same."""
    keepalive = Keepalive(interval_s=0.2, timeout_s=0.2)
    keepalive.start()
    left, right = socket.socketpair()
    visited = VisitedSocket()
    try:
        keepalive.admit(visited, left)
        await asyncio.wait_for(visited.done.wait(), WAIT)
    finally:
        keepalive.stop()
        left.close()
        right.close()


@pytest.mark.parametrize(
    ("interval", "timeout", "effective", "tick"),
    [(20.0, 20.0, 20.0, 1.0), (20.0, 2.0, 2.0, 1.0), (20.0, 0.0, 20.0, 1.0),
     (20.0, 60.0, 60.0, 1.0)],
)
def test_zero_timeout_means_the_interval_and_the_tick_follows_the_interval_alone(
    interval: float, timeout: float, effective: float, tick: float
) -> None:
    keepalive = Keepalive(interval, timeout)
    assert (keepalive.timeout_s, keepalive.tick_s) == (effective, tick)


async def test_no_interval_means_no_wheel_and_no_user_timeout() -> None:
    keepalive = Keepalive(0.0, 0.0)
    keepalive.start()
    with tcp_pair() as (accepted, _):
        keepalive.admit(VisitedSocket(), accepted)
        keepalive.watch(VisitedSocket(), 0.0)
        if USER_TIMEOUT is not None:
            assert accepted.getsockopt(socket.IPPROTO_TCP, USER_TIMEOUT) == 0
    assert len(keepalive) == 0 and not keepalive.enabled
