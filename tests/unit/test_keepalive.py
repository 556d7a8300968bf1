"""The edge-wide keepalive timer, driven against fake sockets on short intervals.

What a socket does on a tick (ping, or close after an unanswered one) is covered over
a real connection in tests/integration/test_handshake.py.
"""

from __future__ import annotations

import asyncio

import pytest

from services.ws_edge.hub import Hub
from services.ws_edge.keepalive import Keepalive

WAIT = 2.0


class TickedSocket:
    """Records the keepalive ticks it is given."""

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float, float]] = []
        self.ticked = asyncio.Event()

    def send_frame(self, frame: bytes) -> bool:
        return True

    def close_with(self, code: int, reason: str) -> None:
        pass

    def keepalive(self, now: float, interval_s: float, timeout_s: float) -> None:
        self.ticks.append((now, interval_s, timeout_s))
        self.ticked.set()


def subscribed(hub: Hub) -> TickedSocket:
    socket = TickedSocket()
    hub.track(socket)
    hub.subscribe(socket, ["k"])
    return socket


async def test_subscribed_sockets_get_ticks_on_the_loop_clock() -> None:
    hub = Hub()
    socket = subscribed(hub)
    keepalive = Keepalive(hub, interval_s=0.08, timeout_s=0.04)
    started = asyncio.get_running_loop().time()
    keepalive.start()
    try:
        for _ in range(3):
            socket.ticked.clear()
            await asyncio.wait_for(socket.ticked.wait(), WAIT)
    finally:
        keepalive.stop()
    times = [now for now, _, _ in socket.ticks]
    assert times == sorted(times) and times[0] >= started + keepalive.tick_s
    assert {(interval, timeout) for _, interval, timeout in socket.ticks} == {(0.08, 0.04)}


async def test_sockets_still_in_the_handshake_get_no_ticks() -> None:
    hub = Hub()
    handshaking = TickedSocket()
    hub.track(handshaking)
    socket = subscribed(hub)
    keepalive = Keepalive(hub, interval_s=0.02, timeout_s=0.02)
    keepalive.start()
    try:
        await asyncio.wait_for(socket.ticked.wait(), WAIT)
    finally:
        keepalive.stop()
    assert handshaking.ticks == []


@pytest.mark.parametrize(
    ("interval", "timeout", "effective", "tick"),
    [(20.0, 20.0, 20.0, 1.0), (20.0, 2.0, 2.0, 0.5), (20.0, 0.0, 20.0, 1.0),
     (20.0, 60.0, 20.0, 1.0)],
)
def test_timeout_is_at_most_the_interval_and_zero_means_the_interval(
    interval: float, timeout: float, effective: float, tick: float
) -> None:
    keepalive = Keepalive(Hub(), interval, timeout)
    assert (keepalive.timeout_s, keepalive.tick_s) == (effective, tick)
