"""The pure parts of issue 19's bench (bench/edge_floor.py): the bare edge's frames and
token reading, and the report's medians, ratios and verdicts."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from bench.bare_edge import text_frame, token_keys
from bench.edge_floor_report import (
    Goal,
    Metric,
    RoundResult,
    alternating,
    goal_line,
    noise_summary,
    spread,
    summary_headers,
    summary_lines,
)
from shared.auth import AuthSettings, TokenService


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_bare_frames_parse_back_with_a_wsproto_client(size: int) -> None:
    payload = ("x" * size).encode()
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(text_frame(payload))
    frames = list(client.received_frames())
    assert len(frames) == 1
    assert frames[0].opcode is Opcode.TEXT
    assert frames[0].message_finished
    assert frames[0].payload == payload.decode()


def test_token_keys_are_the_users_and_its_groups() -> None:
    tokens = TokenService(AuthSettings.from_env({"WARREN_ENV": "development"}, development=True))
    token = tokens.issue("alice", ("team", "ops"), ())
    assert token_keys(token) == ("user.alice", "group.team", "group.ops")


@pytest.mark.parametrize("token", ["", "abc", "a.!!!.c", "a.e30.c", "a.eyJzdWIiOiAiYSBiIn0.c"])
def test_unreadable_tokens_are_refused(token: str) -> None:
    # no payload; not base64; no "sub"; a "sub" that is no user id ("a b")
    with pytest.raises(ValueError):
        token_keys(token)


def rounds_of(metric: str, **values: list[float]) -> list[RoundResult]:
    return [RoundResult(system, i + 1, {metric: v})
            for system, series in values.items() for i, v in enumerate(series)]


def test_goal_against_a_reference_uses_the_medians() -> None:
    rounds = rounds_of("max", warren=[9.0, 30.0, 12.0], bare=[8.0, 10.0, 5.0])
    goal = Goal("max <= 1.5x B", "max", 1.5, at_most=True, reference="bare")
    text, measured, verdict = goal_line(goal, rounds)
    assert measured == "12.00 / 8.00 = 1.50x"
    assert verdict == "PASS"  # 12 <= 1.5 * 8, the outlier of 30 is not the median
    worse = rounds_of("max", warren=[13.0], bare=[8.0])
    assert goal_line(goal, worse)[2] == "FAIL"


def test_goal_that_must_be_reached() -> None:
    goal = Goal("rate >= 1.0x B", "rate", 1.0, at_most=False, reference="bare")
    assert goal_line(goal, rounds_of("rate", warren=[99.0], bare=[100.0]))[2] == "FAIL"
    assert goal_line(goal, rounds_of("rate", warren=[100.0], bare=[100.0]))[2] == "PASS"


def test_absolute_goal_and_missing_figures() -> None:
    goal = Goal("idle < 1 %", "cpu", 1.0, at_most=True)
    assert goal_line(goal, rounds_of("cpu", warren=[0.4, 0.6, 2.0]))[1:] == ["0.60", "PASS"]
    assert goal_line(goal, [])[2] == "-"
    against = Goal("x", "cpu", 1.0, at_most=True, reference="bare")
    assert goal_line(against, rounds_of("cpu", warren=[1.0]))[2] == "-"


def test_summary_has_medians_ranges_and_ratios() -> None:
    rounds = rounds_of("rate", warren=[80.0, 90.0, 100.0], bare=[100.0, 100.0, 120.0],
                       floor=[200.0])
    metrics = [Metric("rate", "msg/s", 0)]
    assert summary_headers(["warren", "bare"], ["bare", "floor"]) == [
        "measure", "warren median (range)", "bare median (range)", "warren / bare",
        "warren / floor"]
    assert summary_lines(rounds, ["warren", "bare"], metrics, ["bare", "floor"]) == [
        ["msg/s", "90 (80–100)", "100 (100–120)", "0.90x", "0.45x"]]


def test_spread_of_one_and_none() -> None:
    assert spread([], 1) == "-"
    assert spread([2.25], 1) == "2.2"
    assert spread([12_345.0, 20_000.0], 0) == "16,172 (12,345–20,000)"


def test_rounds_alternate_forwards_and_backwards() -> None:
    assert alternating(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]


def test_noise_summary_gives_the_ranges() -> None:
    rounds = [RoundResult("warren", 1, load=2.0, steal_pct=0.0, other_pct=10.0),
              RoundResult("bare", 1, load=3.5, steal_pct=4.0, other_pct=60.0)]
    assert noise_summary(rounds) == "load 2.0–3.5, steal 0–4 %, other CPU 10–60 % of a core"
    assert noise_summary([]) == "no rounds"
