"""The frame bucket's arithmetic (services/ws_edge/frame_rate.py), on a clock the test
drives: what a socket may send, when it is refused, when it is closed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import ConfigError
from services.ws_edge.errors import describe
from services.ws_edge.frame_rate import FrameRate

RATE = FrameRate(per_second=10.0, burst=5)


def run(rate: FrameRate, gaps: list[float]) -> list[str]:
    """Each frame's fate, for frames ``gaps`` seconds apart: sent, refused or closed."""
    allowance, fates = float(rate.burst), []
    for gap in gaps:
        allowance = rate.spend(allowance, gap)
        if allowance >= 0:
            fates.append("sent")
        elif rate.exhausted(allowance):
            fates.append("closed")
            break
        else:
            fates.append("refused")
    return fates


def test_a_full_bucket_lets_a_burst_through_then_refuses_then_closes() -> None:
    assert run(RATE, [0.0] * 20) == ["sent"] * 5 + ["refused"] * 4 + ["closed"]


def test_frames_at_the_rate_are_never_refused() -> None:
    assert run(RATE, [0.1] * 1000) == ["sent"] * 1000


@settings(database=None, max_examples=200, deadline=None)
@given(gaps=st.lists(st.floats(min_value=0.1, max_value=100), max_size=200))
def test_frames_no_faster_than_the_rate_are_never_refused(gaps: list[float]) -> None:
    assert set(run(RATE, [0.0] * 5 + gaps)) <= {"sent"}


def test_a_client_that_slows_down_earns_its_allowance_back() -> None:
    # Five at once, three refused, then a pause long enough to pay the debt and one more.
    assert run(RATE, [0.0] * 8 + [0.4]) == ["sent"] * 5 + ["refused"] * 3 + ["sent"]


def test_just_over_the_rate_for_long_is_closed() -> None:
    fates = run(RATE, [0.099] * 10_000)
    assert fates[-1] == "closed" and "refused" in fates


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    assert run(RATE, [3600.0] + [0.0] * 5) == ["sent"] * 5 + ["refused"]


def test_settings() -> None:
    assert FrameRate.from_env({}) == FrameRate(per_second=20.0, burst=50)
    rate = FrameRate.from_env({"WARREN_EDGE_FRAME_RATE": "2.5", "WARREN_EDGE_FRAME_BURST": "3"})
    assert rate == FrameRate(2.5, 3) and rate.enabled
    assert not FrameRate.from_env({"WARREN_EDGE_FRAME_RATE": "0"}).enabled
    for bad in ({"WARREN_EDGE_FRAME_RATE": "-1"}, {"WARREN_EDGE_FRAME_BURST": "0"},
                {"WARREN_EDGE_FRAME_RATE": "fast"}):
        with pytest.raises(ConfigError):
            FrameRate.from_env(bad)


def test_the_refusal_is_rate_limited_in_the_error_table() -> None:
    spec = describe(RATE.refusal())
    assert (spec.status, spec.code) == (429, "rate_limited")
    assert str(RATE.refusal()) == "more than 10 frames a second (bursts of 5); slow down"
