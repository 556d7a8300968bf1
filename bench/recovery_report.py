"""What the recovery storm measured, round by round, and the tables it prints (see
bench/README.md, *Recovery storm*)."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bench.edge_metrics import pass_seconds, passes
from bench.meter import Meter
from bench.report import TARGET_HEADERS, format_table
from bench.stats import Histogram


@dataclass(slots=True)
class Phase:
    """What the recovering edge spent over one phase of a round."""

    wall_s: float = 0.0
    edge_cpu_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # % of a core, by group and other
    steal_pct: float = 0.0
    events: int = 0  # event frames the clients received, repeats included
    replayed_frames: int = 0  # ... of them while their socket was replaying
    connects: int = 0  # sockets made ready
    counters: dict[str, float] = field(default_factory=dict)  # the edge's history metrics
    rss_mb: float = 0.0

    def fill(self, meter: Meter, before: Mapping[str, float], after: Mapping[str, float]) -> None:
        self.wall_s = after["wall"] - before["wall"]
        self.edge_cpu_s = after["edge"] - before["edge"]
        self.cpu = meter.shares(before, after)
        self.steal_pct = 100 * (after["host_steal"] - before["host_steal"]) / max(self.wall_s, 1e-6)

    @property
    def live_events(self) -> int:
        return self.events - self.replayed_frames


@dataclass(slots=True)
class Round:
    """One kill and recovery: the control storm, the recovery and the live phase on the
    edge the clients moved to."""

    number: int
    load: float = 0.0
    control: Phase = field(default_factory=Phase)
    recovery: Phase = field(default_factory=Phase)
    live: Phase = field(default_factory=Phase)
    storm: dict[str, Any] = field(default_factory=dict)  # the drivers' merged reply
    control_storm: dict[str, Any] = field(default_factory=dict)  # the same, of the control
    still_open: int = 0  # sockets that had not seen the kill after 20 s

    @property
    def live_us(self) -> float | None:
        """Edge CPU µs per live delivery, over the live phase."""
        return 1e6 * self.live.edge_cpu_s / self.live.events if self.live.events else None

    @property
    def connect_ms(self) -> float | None:
        """Edge CPU ms per connect without recovery (the control storm), less the live
        deliveries the control clients took meanwhile."""
        if not self.control.connects:
            return None
        live = self.control.events * (self.live_us or 0.0) / 1e6
        return 1e3 * (self.control.edge_cpu_s - live) / self.control.connects

    @property
    def replayed(self) -> int:
        """Events the edge wrote in replays, as its ``replay.done`` frames count them."""
        return int(self.storm.get("replay_events", 0))

    @property
    def gross_us(self) -> float | None:
        """Edge CPU µs over the recovery phase per replayed event: connects and live
        deliveries included."""
        return 1e6 * self.recovery.edge_cpu_s / self.replayed if self.replayed else None

    @property
    def net_us(self) -> float | None:
        """The same, less the connects at the control storm's cost and the live
        deliveries of the phase at the live phase's."""
        if not self.replayed or self.connect_ms is None or self.live_us is None:
            return None
        rest = (self.recovery.edge_cpu_s - self.recovery.connects * self.connect_ms / 1e3
                - self.recovery.live_events * self.live_us / 1e6)
        return 1e6 * rest / self.replayed

    @property
    def times(self) -> Histogram:
        """Per client, from its first attempt to its ``replay.done``."""
        times = self.storm.get("times")
        return times if isinstance(times, Histogram) else Histogram()

    @property
    def replays(self) -> Histogram:
        """Per client, from its ``welcome`` to its ``replay.done``."""
        replays = self.storm.get("replays")
        return replays if isinstance(replays, Histogram) else Histogram()


@dataclass(slots=True)
class Result:
    """Every round so far, then the check of every client's events."""

    rounds: list[Round] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)
    published: int = 0
    publish_failed: int = 0
    quiet: bool = False
    drops: Counter[str] = field(default_factory=Counter)  # ready sockets the edge closed, by code
    late_ready: int = 0  # ... opened again
    late_failures: Counter[str] = field(default_factory=Counter)
    example: dict[str, Any] = field(default_factory=dict)  # one user's lost (step, seq)
    steps: list[dict[str, Any]] = field(default_factory=list)  # what was published
    error: str | None = None


ROUND_HEADERS: Final = (
    "round", "recovered", "outcomes", "control: all welcomed s (refused)", "all welcomed s",
    "all recovered s",
    "per client p50 / p99 s", "welcome -> replay.done p50 / p99 s", "attempts",
    "refused", "replayed events", "stream passes", "pass s", "edge CPU s", "µs / replayed (gross)",
    "µs / replayed (net)", "µs / live dlv", "ms / connect", "live dlv/s", "edge CPU% (rec / live)",
    "load", "steal %", "other CPU%",
)


def round_cells(r: Round) -> list[str]:
    storm = r.storm
    times = r.times
    outcomes = ", ".join(f"{n:,} {o}" for o, n in sorted(storm.get("outcomes", {}).items()))
    refused = sum(int(n) for n in storm.get("failures", {}).values())
    live_rate = r.live.events / r.live.wall_s if r.live.wall_s else 0.0
    return [
        str(r.number),
        f"{storm.get('ready', 0):,} of {storm.get('ready', 0) + storm.get('unfinished', 0):,}",
        outcomes or "-",
        f"{r.control_storm.get('last_welcome', 0.0):.1f} "
        f"({sum(int(n) for n in r.control_storm.get('failures', {}).values()):,})",
        f"{storm.get('last_welcome', 0.0):.1f}",
        f"{storm.get('last_ready', 0.0):.1f}",
        f"{_s(times.percentile(0.5))} / {_s(times.percentile(0.99))}",
        f"{_s(r.replays.percentile(0.5))} / {_s(r.replays.percentile(0.99))}",
        f"{storm.get('attempts', 0):,}", f"{refused:,}", f"{r.replayed:,}",
        f"{passes(r.recovery.counters):.0f}", f"{pass_seconds(r.recovery.counters):.2f}",
        f"{r.recovery.edge_cpu_s:.2f}", _f(r.gross_us), _f(r.net_us), _f(r.live_us),
        _f(r.connect_ms, ".2f"), f"{live_rate:,.0f}",
        f"{r.recovery.cpu.get('edge', 0.0):.0f} / {r.live.cpu.get('edge', 0.0):.0f}",
        f"{r.load:.1f}", f"{max(r.recovery.steal_pct, r.live.steal_pct):.0f}",
        f"{max(r.recovery.cpu.get('other', 0.0), r.live.cpu.get('other', 0.0)):.0f}",
    ]


MEDIAN_HEADERS: Final = ("measure", "median", "rounds")


def median_lines(rounds: Sequence[Round]) -> list[list[str]]:
    def line(name: str, get: Callable[[Round], float | None], fmt: str) -> list[str]:
        values = [v for r in rounds if (v := get(r)) is not None]
        return [name, format(statistics.median(values), fmt) if values else "-",
                ", ".join(format(v, fmt) for v in values) or "-"]

    return [
        line("time until every client recovered, s", lambda r: r.storm.get("last_ready"), ".1f"),
        line("time until every client was welcomed, s", lambda r: r.storm.get("last_welcome"),
             ".1f"),
        line("control storm (no since): time until every client was welcomed, s",
             lambda r: r.control_storm.get("last_welcome"), ".1f"),
        line("per client p99, s", lambda r: r.times.percentile(0.99), ".2f"),
        line("per client welcome -> replay.done p99, s", lambda r: r.replays.percentile(0.99),
             ".2f"),
        line("replayed events", lambda r: float(r.replayed), ",.0f"),
        line("stream passes", lambda r: passes(r.recovery.counters), ".0f"),
        line("edge CPU µs per replayed event, gross", lambda r: r.gross_us, ".1f"),
        line("edge CPU µs per replayed event, net of connects and live", lambda r: r.net_us, ".1f"),
        line("edge CPU µs per live delivery", lambda r: r.live_us, ".1f"),
        line("edge CPU ms per connect (control storm)", lambda r: r.connect_ms, ".2f"),
    ]


def counter_lines(rounds: Sequence[Round]) -> list[str]:
    """The edge's history metrics that moved in each recovery."""
    return [f"round {r.number}: " + ", ".join(f"{k} +{v:,.2f}".replace(".00", "")
                                             for k, v in sorted(r.recovery.counters.items()))
            for r in rounds if r.recovery.counters]


def check_lines(result: Result) -> list[list[str]]:
    """Every client's events against what was published (reported, never asserted)."""
    t = result.totals
    return [
        ["events published (steps of every kind)", f"{result.published:,}",
         f"{result.publish_failed:,} not confirmed"],
        ["deliveries expected / received", f"{t['expected']:,} / {t['received']:,}",
         "quiet at the end" if result.quiet else "still arriving at the end"],
        ["lost (after de-duplication by id)", f"{t['lost']:,}",
         f"{t['users_with_loss']:,} users" if t["lost"] else "0: PASS"],
        ["duplicated (after de-duplication by id)", f"{t['duplicates']:,}",
         "0: PASS" if not t["duplicates"] else "FAIL"],
        ["out of order per address", f"{t['disorder']:,}",
         "0: PASS" if not t["disorder"] else "FAIL"],
        ["another user's events", f"{t['foreign']:,}", "0: PASS" if not t["foreign"] else "FAIL"],
        ["repeats dropped by id (the window's overlap)", f"{t['repeats']:,}", "-"],
    ]


def print_report(result: Result, markdown: bool) -> None:
    rounds = result.rounds
    if rounds:
        print()
        print(format_table(ROUND_HEADERS, [round_cells(r) for r in rounds], markdown))
        print()
        print(format_table(MEDIAN_HEADERS, median_lines(rounds), markdown))
        lines = counter_lines(rounds)
        if lines:
            print()
            for line in lines:
                print(line)
        failures = Counter[str]()
        for r in rounds:
            failures.update(r.storm.get("failures", {}))
        if failures:
            print("\nrefused or failed connects, retried: "
                  + ", ".join(f"{n:,} {why}" for why, n in failures.most_common()))
    if result.totals:
        print()
        print(format_table(TARGET_HEADERS, check_lines(result), markdown))
    if result.drops:
        codes = ", ".join(f"{n:,} x {code}" for code, n in sorted(result.drops.items()))
        retried = ", ".join(f"{n:,} {why}" for why, n in result.late_failures.most_common())
        print(f"\nready sockets the edge closed or lost outside the kills (-1: no close frame): "
              f"{codes}; opened again with their position: {result.late_ready:,}"
              + (f" (after {retried})" if retried else ""))
    example = result.example
    if example:
        kinds = {int(s["step"]): s["kind"] for s in result.steps}
        lost = ", ".join(f"{kinds.get(step, '?')} step {step} #{seq}"
                         for step, seq in example["lost"])
        print(f"\nfor example, {example['user']} lost {example['count']} events "
              f"(socket {'open' if example['open'] else 'not open'} at the end): {lost}")
        print("  its sockets (monotonic s): " + "; ".join(example["log"]))
    if result.error:
        print(f"\nthe recovery storm did not finish: {result.error}")


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)
