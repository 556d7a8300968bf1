"""GapReplay (services/ws_edge/gap.py): which sockets it holds, how it hands their replays
to the reader together, and what it does when a replay cannot be made. The sockets and
the reader are seams here; tests/chaos/test_inband_replay.py runs the real ones."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from services.ws_edge.errors import CloseCode
from services.ws_edge.gap import GapReplay
from services.ws_edge.history import HistoryUnavailable, Recovery, Request
from services.ws_edge.hub import Hub
from services.ws_edge.metrics import EdgeMetrics


class Socket:
    """A live socket as GapReplay sees it: held once, then replayed from where it said."""

    def __init__(self, hub: Hub, *keys: str, live_from: float = 0.0) -> None:
        self.hub, self.keys, self.live_from = hub, keys, live_from
        self.since: float | None = None
        self.rebound_at: float | None = None
        self.closed: tuple[int, str] | None = None
        hub.track(self)
        hub.subscribe(self, keys)

    def send_frame(self, frame: bytes) -> bool:
        return True

    def close_with(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def keepalive(self, now: float, interval_s: float) -> float | None:
        return None

    def hold_frame(self, event_id: str, frame: bytes) -> None:
        pass

    def replay_begins(self, recovered: bool, oldest: float | None) -> bool:
        return True

    def replay_event(self, frame: bytes, event_id: str) -> bool:
        return True

    def replay_ends(self) -> None:
        pass

    def gap_begins(self, delivered: float | None) -> bool:
        if self.since is not None:
            return False
        self.since = self.live_from if delivered is None else max(delivered, self.live_from)
        self.hub.hold(self, self.keys)
        return True

    def gap_replay(self, rebound_at: float) -> Recovery | None:
        if self.since is None:
            return None
        self.rebound_at = rebound_at
        return Recovery(self, frozenset(self.keys), self.since, 2.0)


class Reader:
    """Records each call; each request fails with the next of ``failures`` (the last one
    once they run out; None: succeeds)."""

    def __init__(self) -> None:
        self.calls: list[list[Request]] = []
        self.failures: list[BaseException | None] = [None]
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def read_all(self, requests: Sequence[Request]) -> list[BaseException | None]:
        self.calls.append(list(requests))
        self.entered.set()
        await self.gate.wait()
        failure = self.failures.pop(0) if len(self.failures) > 1 else self.failures[0]
        return [failure] * len(requests)


def make(delivered: float | None = 100.0, retries: int = 0
         ) -> tuple[Hub, Reader, EdgeMetrics, GapReplay, list[bool]]:
    hub, reader, metrics = Hub(), Reader(), EdgeMetrics(CollectorRegistry())
    link = [True]
    gap = GapReplay(hub, reader, metrics, delivered=lambda: delivered,
                    connected=lambda: link[0], retry_delays_s=[0.0] * retries)
    return hub, reader, metrics, gap, link


def failed(metrics: EdgeMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "warren_edge_inband_recoveries_total", {"outcome": "failed"})
    return value or 0.0


async def test_every_live_socket_is_held_once_from_the_later_of_delivered_and_its_own_position(
) -> None:
    hub, _reader, _metrics, gap, _link = make(delivered=100.0)
    old = Socket(hub, "user.a", "broadcast", live_from=50.0)
    new = Socket(hub, "user.b", "broadcast", live_from=150.0)
    assert gap.hold() == 2
    assert (old.since, new.since) == (100.0, 150.0)
    assert hub.subscribed() == () and set(hub.held()) == {old, new}
    later = Socket(hub, "user.c", "broadcast", live_from=160.0)  # welcomed in the outage
    assert gap.hold() == 1  # at the reconnection: only the one not held yet
    assert later.since == 160.0


async def test_without_a_delivered_event_the_sockets_own_position_is_the_start() -> None:
    hub, _reader, _metrics, gap, _link = make(delivered=None)
    socket = Socket(hub, "user.a", live_from=42.0)
    gap.hold()
    assert socket.since == 42.0


async def test_all_the_held_sockets_are_handed_to_the_reader_in_one_call() -> None:
    hub, reader, metrics, gap, _link = make()
    sockets = [Socket(hub, f"user.u{n}", "group.team", "broadcast") for n in range(50)]
    gap.hold()
    gap.replay(frozenset())
    await gap.idle()
    assert len(reader.calls) == 1 and len(reader.calls[0]) == 50
    assert all(s.closed is None and s.rebound_at is not None for s in sockets)
    assert failed(metrics) == 0


async def test_a_socket_whose_keys_are_not_bound_again_is_closed_not_replayed() -> None:
    hub, reader, metrics, gap, _link = make()
    bound = Socket(hub, "user.a", "broadcast")
    unbound = Socket(hub, "user.b", "group.ops", "broadcast")
    gap.hold()
    gap.replay(frozenset({"group.ops"}))
    await gap.idle()
    assert unbound.closed == (CloseCode.TRY_AGAIN_LATER, "broker unavailable, retry later")
    assert bound.closed is None
    assert [r.keys for r in reader.calls[0]] == [frozenset({"user.a", "broadcast"})]
    assert failed(metrics) == 1


async def test_a_replay_that_cannot_be_read_is_read_again_then_its_sockets_closed_with_1013(
) -> None:
    hub, reader, metrics, gap, _link = make(retries=2)
    sockets = [Socket(hub, "user.a"), Socket(hub, "user.b")]
    reader.failures = [HistoryUnavailable("the stream could not be read")]
    gap.hold()
    gap.replay(frozenset())
    await gap.idle()
    assert len(reader.calls) == 3
    assert [s.closed for s in sockets] == [
        (CloseCode.TRY_AGAIN_LATER, "history unavailable, retry later")] * 2
    assert failed(metrics) == 2


async def test_a_replay_read_on_a_later_try_closes_nothing() -> None:
    hub, reader, metrics, gap, _link = make(retries=3)
    socket = Socket(hub, "user.a")
    reader.failures = [HistoryUnavailable("no stream leader"), None]
    gap.hold()
    gap.replay(frozenset())
    await gap.idle()
    assert len(reader.calls) == 2 and socket.closed is None
    assert failed(metrics) == 0


async def test_a_replay_cut_short_by_another_loss_keeps_its_sockets_held_for_the_next() -> None:
    hub, reader, metrics, gap, link = make()
    socket = Socket(hub, "user.a")
    gap.hold()
    reader.gate.clear()
    reader.failures = [HistoryUnavailable("stream channel closed"), None]
    gap.replay(frozenset())
    await reader.entered.wait()
    link[0] = False  # the connection breaks during the read
    gap.hold()
    reader.gate.set()
    await gap.idle()
    assert socket.closed is None and hub.held() == (socket,)
    assert failed(metrics) == 0
    # Back again: the same socket is replayed, from the same position.
    link[0] = True
    gap.replay(frozenset())
    await gap.idle()
    assert len(reader.calls) == 2 and reader.calls[1][0].keys == frozenset({"user.a"})
    assert socket.since is not None and socket.closed is None


async def test_a_replay_asked_for_while_one_runs_runs_after_it() -> None:
    hub, reader, _metrics, gap, _link = make()
    Socket(hub, "user.a")
    gap.hold()
    reader.gate.clear()
    gap.replay(frozenset())
    await reader.entered.wait()
    gap.replay(frozenset())  # a newer rebind finished meanwhile
    reader.gate.set()
    await gap.idle()
    assert len(reader.calls) == 2
