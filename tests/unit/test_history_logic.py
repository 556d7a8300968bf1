"""The pure parts of history and recovery (docs/protocol.md 17): positions, history
questions, the stream's head, where a pass starts, and how a pass shares its events."""

from __future__ import annotations

import datetime
import math

import orjson
import pytest

from services.ws_edge import frames
from services.ws_edge.errors import FrameError
from services.ws_edge.history import (
    FIRST,
    Head,
    Query,
    Recovery,
    _earlier,
    _hand_out,
    _offset_argument,
    _Pass,
)
from services.ws_edge.hub import Hub, TextFramer
from tests.unit.test_hub import FakeSocket

NOW = 1_800_000_000.0


# --- positions ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "1799999999", "1799999999.5", "0", "1800000001.999999999", "1.7999999994E9",
    "1.799999999e+09", "1799999999.500000000000", "1e9",
])
def test_a_position_is_unix_seconds_as_a_json_number(value: str) -> None:
    assert frames.position_of([value], NOW, 2.0) == float(value)


def test_no_since_is_no_position() -> None:
    assert frames.position_of([], NOW, 2.0) is None


@pytest.mark.parametrize("values", [
    [""], ["abc"], ["nan"], ["NaN"], ["inf"], ["-1"], ["1e400"], ["1_000"], ["+12"],
    [" 12"], ["12 "], ["0x10"], ["1.2.3"], ["01"], ["1."], [".5"], ["9" * 13],
    ["1." + "0" * 70], ["1", "2"],
    [str(NOW + 10)],  # further in the future than the window
])
def test_anything_else_is_an_invalid_position(values: list[str]) -> None:
    assert frames.position_of(values, NOW, 2.0) == frames.INVALID_POSITION


def test_a_position_within_the_window_ahead_is_accepted() -> None:
    assert frames.position_of([str(NOW + 1.5)], NOW, 2.0) == NOW + 1.5


# --- history questions --------------------------------------------------------------


def ask(data: dict[str, object]) -> frames.HistoryAsk:
    return frames.history_ask(frames.ClientFrame(type="history", ref=1, to=None, data=data))


def test_a_history_question_has_a_key_a_limit_and_maybe_a_since() -> None:
    question = ask({"key": "group:ops", "limit": 5, "since": 12})
    assert (str(question.key), question.limit, question.since) == ("group:ops", 5, 12.0)
    assert ask({"key": "broadcast"}).limit == frames.DEFAULT_HISTORY_LIMIT


@pytest.mark.parametrize("data", [
    {}, {"key": 3}, {"key": "service:x"}, {"key": "user:"}, {"key": "group:a.b"},
    {"key": "user:a", "limit": 0}, {"key": "user:a", "limit": 1001},
    {"key": "user:a", "limit": True}, {"key": "user:a", "limit": "5"},
    {"key": "user:a", "limit": 2.0}, {"key": "user:a", "since": "1"},
    {"key": "user:a", "since": -1}, {"key": "user:a", "since": math.inf},
    {"key": "user:a", "since": False},
])
def test_a_malformed_history_question_is_an_invalid_frame(data: dict[str, object]) -> None:
    with pytest.raises(FrameError) as refused:
        ask(data)
    assert refused.value.code == "invalid_frame"


# --- the head, and where a pass starts ------------------------------------------------


def test_a_stream_that_never_dropped_anything_holds_every_position() -> None:
    assert Head(offset=0, position=NOW, oldest=NOW).holds(0.0)


def test_a_truncated_stream_holds_positions_from_its_first_event_on() -> None:
    head = Head(offset=500, position=NOW, oldest=NOW)
    assert head.holds(NOW) and head.holds(NOW + 1)
    assert not head.holds(NOW - 0.001)


def test_a_pass_starts_at_the_earliest_seek() -> None:
    assert _earlier(5.0, 3.0) == 3.0
    assert _earlier(FIRST, 3.0) == FIRST and _earlier(3.0, FIRST) == FIRST


def test_a_position_is_sought_at_the_whole_second_before_it() -> None:
    assert _offset_argument(NOW + 0.9) == datetime.datetime.fromtimestamp(
        NOW, tz=datetime.timezone.utc
    )
    assert _offset_argument(FIRST) == FIRST
    assert _offset_argument(-3.0) == FIRST


# --- sharing a pass -------------------------------------------------------------------


class Target:
    """A recovering socket as a pass sees it."""

    def __init__(self, recovered_ok: bool = True, gone_after: int | None = None) -> None:
        self.welcome: tuple[bool, float | None] | None = None
        self.events: list[str] = []
        self.ended = False
        self._gone_after = gone_after

    def replay_begins(self, recovered: bool, oldest: float | None) -> bool:
        self.welcome = (recovered, oldest)
        return recovered

    def replay_event(self, frame: bytes, event_id: str) -> bool:
        if self._gone_after is not None and len(self.events) >= self._gone_after:
            return False
        self.events.append(event_id)
        return True

    def replay_ends(self) -> None:
        self.ended = True


class Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


def event(n: int, to: str, ts: float) -> bytes:
    return orjson.dumps({"v": 1, "id": f"e{n}", "type": "message", "ts": ts, "to": to,
                         "from": "service:t", "data": {}})


def feed(run: _Pass, *bodies: bytes) -> Count:
    count = Count()
    for body in bodies:
        _hand_out(run, body, TextFramer(), count)
    return count


def planned(*requests: Recovery | Query, head: Head) -> _Pass:
    run = _Pass(list(requests))
    for request in requests:
        if request.seek(head) is not None:
            for key in request.keys:
                run.by_key.setdefault(key, []).append(request)
    return run


async def test_each_recovery_gets_the_events_of_its_keys_from_its_own_start() -> None:
    alice, bob = Target(), Target()
    head = Head(0, NOW - 100, NOW - 99)
    run = planned(
        Recovery(alice, frozenset({"user.alice", "broadcast"}), NOW - 10, 2.0),
        Recovery(bob, frozenset({"user.bob", "group.ops", "broadcast"}), NOW - 5, 2.0),
        head=head,
    )
    replayed = feed(
        run,
        event(1, "user:alice", NOW - 13), event(2, "user:alice", NOW - 9),
        event(3, "user:bob", NOW - 8), event(4, "group:ops", NOW - 6),
        event(5, "broadcast", NOW - 4), event(6, "user:carol", NOW - 3),
        b"not json", orjson.dumps({"to": "user:alice"}),
    )
    assert alice.events == ["e2", "e5"]
    assert bob.events == ["e4", "e5"]  # e3 is older than bob's since - window
    assert replayed.value == 3
    assert alice.welcome == (True, NOW - 99) and bob.welcome == (True, NOW - 99)


async def test_a_recovery_the_stream_cannot_serve_reads_nothing() -> None:
    late = Target()
    recovery = Recovery(late, frozenset({"user.a"}), NOW - 50, 2.0)
    assert recovery.seek(Head(offset=10, position=NOW - 20, oldest=NOW - 19)) is None
    assert late.welcome == (False, NOW - 19)


async def test_a_socket_that_leaves_is_not_fed_again() -> None:
    gone = Target(gone_after=1)
    run = planned(Recovery(gone, frozenset({"user.a"}), NOW, 2.0), head=Head(0, NOW, None))
    feed(run, event(1, "user:a", NOW), event(2, "user:a", NOW), event(3, "user:a", NOW))
    assert gone.events == ["e1"] and run.by_key["user.a"] == []


async def test_a_history_query_keeps_the_newest_events_of_its_key_since_its_since() -> None:
    query = Query("group.ops", NOW - 5, limit=2)
    run = planned(query, head=Head(3, NOW - 60, NOW - 59))
    feed(run, *(event(n, "group:ops", NOW - 10 + n) for n in range(10)),
         event(99, "group:dev", NOW))
    assert [orjson.loads(orjson.dumps(e))["id"] for e in query.events] == ["e8", "e9"]
    assert query.oldest == NOW - 59


# --- the hub holds a recovering socket's live events ----------------------------------


class HoldingSocket(FakeSocket):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.held: list[tuple[str, bytes]] = []

    def hold_frame(self, event_id: str, frame: bytes) -> None:
        self.held.append((event_id, frame))


def test_a_held_socket_gets_its_events_to_hold_until_it_subscribes() -> None:
    hub = Hub()
    live, holding = FakeSocket("live"), HoldingSocket("holding")
    hub.track(live)
    hub.subscribe(live, ("k",))
    hub.track(holding)
    hub.hold(holding, ("k",))
    assert hub.dispatch("k", b"a", "id-a") == 1
    assert hub.dispatch_batch([("k", b"b", "id-b"), ("j", b"c", "id-c")]) == [1, 0]
    assert holding.held == [("id-a", b"a"), ("id-b", b"b")] and holding.frames == []
    hub.subscribe(holding, ("k",))
    hub.dispatch("k", b"d", "id-d")
    assert holding.frames == [b"d"] and len(holding.held) == 2
    hub.forget(holding)
    hub.hold(HoldingSocket("other"), ("k",))
    hub.forget(live)
