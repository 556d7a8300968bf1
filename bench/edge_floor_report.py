"""The tables of ``bench.edge_floor``: each round's figures, the medians of every system
side by side with Warren's ratio to its reference, and issue 19's goals as PASS/FAIL.

Pure: it takes what the rounds measured and returns rows of cells, so that it can be
tested without a broker.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

WARREN: Final = "warren"


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure a round measures: its key in :attr:`RoundResult.values`, its column
    heading, and how many decimals it is printed with."""

    key: str
    label: str
    digits: int = 1


@dataclass(slots=True)
class RoundResult:
    """One system measured once: the figures, and how quiet the host was meanwhile."""

    system: str
    round: int
    values: dict[str, float] = field(default_factory=dict)
    load: float = 0.0  # 1-minute load average at the end
    steal_pct: float = 0.0  # % of one core the hypervisor gave to other guests
    other_pct: float = 0.0  # % of one core used outside the bench's processes and the broker


@dataclass(frozen=True, slots=True)
class Goal:
    """``system``'s median of ``metric`` against ``factor`` × the reference's median
    (``reference`` None: against ``factor`` itself). ``at_most``: the figure must not
    exceed the bound (latency, CPU), else it must reach it (rates)."""

    text: str
    metric: str
    factor: float
    at_most: bool
    reference: str | None = None
    system: str = WARREN


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def samples(rounds: Sequence[RoundResult], system: str, metric: str) -> list[float]:
    """The values of ``metric`` for ``system``, round by round, where it was measured."""
    return [r.values[metric] for r in rounds if r.system == system and metric in r.values]


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def spread(values: Sequence[float], digits: int) -> str:
    """``median (min–max)``; one value alone; ``-`` for none."""
    middle = median(values)
    if middle is None:
        return "-"
    if len(values) == 1:
        return fmt(middle, digits)
    return f"{fmt(middle, digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


ROUND_BASE_HEADERS: Final = ("round", "system")
ROUND_NOISE_HEADERS: Final = ("load", "steal %", "other CPU%")


def round_headers(metrics: Sequence[Metric]) -> list[str]:
    return [*ROUND_BASE_HEADERS, *(m.label for m in metrics), *ROUND_NOISE_HEADERS]


def round_cells(result: RoundResult, metrics: Sequence[Metric]) -> list[str]:
    return [
        str(result.round),
        result.system,
        *(fmt(result.values.get(m.key), m.digits) for m in metrics),
        f"{result.load:.1f}",
        f"{result.steal_pct:.0f}",
        f"{result.other_pct:.0f}",
    ]


def summary_headers(systems: Sequence[str], references: Sequence[str]) -> list[str]:
    return [*("measure", *(f"{s} median (range)" for s in systems)),
            *(f"{WARREN} / {r}" for r in references)]


def summary_lines(rounds: Sequence[RoundResult], systems: Sequence[str],
                  metrics: Sequence[Metric], references: Sequence[str]) -> list[list[str]]:
    """Per metric: every system's median with its range over the rounds, and Warren's
    median over each reference's."""
    lines = []
    for metric in metrics:
        cells = [metric.label]
        cells += [spread(samples(rounds, s, metric.key), metric.digits) for s in systems]
        ours = median(samples(rounds, WARREN, metric.key))
        for reference in references:
            r = ratio(ours, median(samples(rounds, reference, metric.key)))
            cells.append("-" if r is None else f"{r:.2f}x")
        lines.append(cells)
    return lines


GOAL_HEADERS: Final = ("goal", "measured (medians)", "result")


def goal_line(goal: Goal, rounds: Sequence[RoundResult], digits: int = 2) -> list[str]:
    """The goal, what was measured against it, and PASS/FAIL (``-`` when not measured)."""
    ours = median(samples(rounds, goal.system, goal.metric))
    bound: float | None
    if goal.reference is None:
        bound = goal.factor
        measured = fmt(ours, digits)
    else:
        theirs = median(samples(rounds, goal.reference, goal.metric))
        bound = None if theirs is None else goal.factor * theirs
        r = ratio(ours, theirs)
        measured = (f"{fmt(ours, digits)} / {fmt(theirs, digits)} = "
                    f"{'-' if r is None else f'{r:.2f}x'}")
    if ours is None or bound is None:
        return [goal.text, measured, "-"]
    ok = ours <= bound if goal.at_most else ours >= bound
    return [goal.text, measured, "PASS" if ok else "FAIL"]


def noise_summary(rounds: Sequence[RoundResult]) -> str:
    """One line: the range of load, steal and other CPU over the rounds."""
    if not rounds:
        return "no rounds"
    loads = [r.load for r in rounds]
    steals = [r.steal_pct for r in rounds]
    others = [r.other_pct for r in rounds]
    return (f"load {min(loads):.1f}–{max(loads):.1f}, steal {min(steals):.0f}–"
            f"{max(steals):.0f} %, other CPU {min(others):.0f}–{max(others):.0f} % of a core")


def alternating(systems: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the systems in each round: forwards, then backwards, and so on
    (A B C, C B A, A B C, ...), so that a drift of the host's load favours none."""
    order = list(systems)
    return [order if r % 2 == 0 else order[::-1] for r in range(rounds)]
