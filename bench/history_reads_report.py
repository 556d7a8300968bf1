"""What the history reads bench measured, phase by phase, and the tables it prints (see
bench/README.md, *History reads*)."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bench.edge_metrics import pass_seconds, passes
from bench.meter import Meter
from bench.report import format_table
from bench.stats import Histogram
from bench.stream_floor import FloorRead


@dataclass(slots=True)
class Phase:
    """One phase of a round: the baseline, or one request shape."""

    round: int
    shape: str  # baseline, recent or full
    wall_s: float = 0.0
    edge_cpu_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # % of a core, by group and other
    steal_pct: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    rss_mb: float = 0.0
    load: float = 0.0
    stream_events: int = 0  # published so far: what the stream holds, retention aside
    sent: int = 0
    skipped: int = 0  # not sent: every client was waiting for an answer
    answered: int = 0
    unanswered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    lag: Histogram = field(default_factory=Histogram)
    events: int = 0  # in the answers
    full: int = 0  # answers with ``limit`` events
    truncated: int = 0  # answers whose ``oldest`` is after their ``since``
    bytes: int = 0
    closed: int = 0  # reading sockets found closed
    closes: Counter[str] = field(default_factory=Counter)  # codes the clients saw
    reopened: int = 0  # clients opened again before the phase (the edge had closed them)

    def fill(self, meter: Meter, before: Mapping[str, float], after: Mapping[str, float]) -> None:
        self.wall_s = after["wall"] - before["wall"]
        self.edge_cpu_s = after["edge"] - before["edge"]
        self.cpu = meter.shares(before, after)
        self.steal_pct = 100 * (after["host_steal"] - before["host_steal"]) / max(self.wall_s, 1e-6)

    def add(self, replies: Sequence[dict[str, Any]]) -> None:
        for reply in replies:
            for key in ("sent", "skipped", "answered", "unanswered", "events", "full",
                        "truncated", "bytes", "closed"):
                setattr(self, key, getattr(self, key) + int(reply[key]))
            self.errors.update(reply["errors"])
            self.closes.update(reply["closes"])
            self.latency.merge_sparse(reply["latency"])
            self.lag.merge_sparse(reply["lag"])

    @property
    def edge_pct(self) -> float:
        return self.cpu.get("edge", 0.0)

    def extra_ms(self, baseline: Phase | None) -> float | None:
        """Edge CPU ms per request beyond the baseline phase's CPU rate."""
        if baseline is None or not self.sent or not baseline.wall_s:
            return None
        idle = baseline.edge_cpu_s / baseline.wall_s * self.wall_s
        return 1e3 * (self.edge_cpu_s - idle) / self.sent


@dataclass(slots=True)
class Result:
    rate: float
    fill: int = 0
    fill_s: float = 0.0
    event_bytes: int = 0  # one event as published (the publisher's envelope, encoded)
    started: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    floors: list[tuple[int, str, FloorRead]] = field(default_factory=list)
    error: str | None = None

    def baseline(self, number: int) -> Phase | None:
        return next((p for p in self.phases if p.round == number and p.shape == "baseline"), None)


PHASE_HEADERS: Final = (
    "round", "shape", "requests", "skipped", "req/s", "answered", "answered/s", "errors",
    "unanswered", "closed (code)",
    "p50 ms",
    "p99 ms", "max ms", "events / answer", "KB / answer", "edge CPU%", "edge CPU% over baseline",
    "edge ms / request", "passes", "requests / pass", "s / pass", "send lag p99 ms",
    "stream events", "edge RSS MB", "load", "steal %", "other CPU%",
)


def phase_cells(p: Phase, baseline: Phase | None) -> list[str]:
    n_passes = passes(p.counters)
    over = _over(p, baseline) if p.shape != "baseline" else None
    errors = ", ".join(f"{n} {code}" for code, n in p.errors.most_common()) or "0"
    reading = p.shape != "baseline"
    return [
        str(p.round), p.shape, f"{p.sent:,}" if reading else "-",
        f"{p.skipped:,}" if reading else "-",
        f"{p.sent / p.wall_s:.0f}" if reading and p.wall_s else "-",
        f"{p.answered:,}" if reading else "-",
        f"{p.answered / p.wall_s:.0f}" if reading and p.wall_s else "-",
        errors if reading else "-",
        f"{p.unanswered:,}" if reading else "-",
        ", ".join(f"{n} ({code})" for code, n in sorted(p.closes.items())) or "0",
        _ms(p.latency.percentile(0.5)), _ms(p.latency.percentile(0.99)),
        _ms(p.latency.percentile(1.0)),
        f"{p.events / p.answered:.1f}" if p.answered else "-",
        f"{p.bytes / p.answered / 1024:.1f}" if p.answered else "-",
        f"{p.edge_pct:.0f}", "-" if over is None else f"{over:+.0f}",
        _f(p.extra_ms(baseline) if reading else None, ".2f"),
        f"{n_passes:.0f}", f"{p.answered / n_passes:.1f}" if n_passes and reading else "-",
        f"{pass_seconds(p.counters) / n_passes:.3f}" if n_passes else "-",
        _ms(p.lag.percentile(0.99)), f"{p.stream_events:,}", f"{p.rss_mb:.0f}",
        f"{p.load:.1f}", f"{p.steal_pct:.0f}", f"{p.cpu.get('other', 0.0):.0f}",
    ]


MEDIAN_HEADERS: Final = ("shape", "measure", "median", "rounds")
FLOOR_HEADERS: Final = ("round", "floor of a pass, shape", "messages read", "s", "messages/s",
                        "CPU µs / message")


def median_lines(result: Result) -> list[list[str]]:
    lines: list[list[str]] = []
    shapes = list(dict.fromkeys(p.shape for p in result.phases))

    def line(shape: str, name: str, get: Callable[[Phase], float | None], fmt: str) -> None:
        values = [v for p in result.phases if p.shape == shape and (v := get(p)) is not None]
        lines.append([shape, name, format(statistics.median(values), fmt) if values else "-",
                      ", ".join(format(v, fmt) for v in values) or "-"])

    for shape in shapes:
        line(shape, "edge CPU %", lambda p: p.edge_pct, ".0f")
        if shape == "baseline":
            continue
        line(shape, "answered per s", lambda p: p.answered / p.wall_s if p.wall_s else None,
             ".0f")
        line(shape, "p50 ms", lambda p: _scaled(p.latency.percentile(0.5)), ".1f")
        line(shape, "p99 ms", lambda p: _scaled(p.latency.percentile(0.99)), ".1f")
        line(shape, "edge CPU % over baseline",
             lambda p: _over(p, result.baseline(p.round)), "+.0f")
        line(shape, "edge CPU ms per request over baseline",
             lambda p: p.extra_ms(result.baseline(p.round)), ".2f")
        line(shape, "stream passes per s",
             lambda p: passes(p.counters) / p.wall_s if p.wall_s else None, ".1f")
        line(shape, "edge CPU ms per pass over baseline",
             lambda p: _per_pass(p, result.baseline(p.round)), ".0f")
        line(shape, "events per answer", lambda p: p.events / p.answered if p.answered else None,
             ".1f")
    return lines


def print_report(result: Result, markdown: bool) -> None:
    if result.phases:
        print()
        print(format_table(PHASE_HEADERS, [phase_cells(p, result.baseline(p.round))
                                           for p in result.phases], markdown))
        print()
        print(format_table(MEDIAN_HEADERS, median_lines(result), markdown))
    if result.floors:
        print()
        print(format_table(FLOOR_HEADERS, [
            [str(n), shape, f"{floor.messages:,}", f"{floor.seconds:.3f}", f"{floor.rate:,.0f}",
             f"{1e6 * floor.cpu_s / floor.messages:.1f}" if floor.messages else "-"]
            for n, shape, floor in result.floors], markdown))
    if result.phases:
        total = result.phases[-1].stream_events
        print(f"\nthe stream: {result.fill:,} events published in {result.fill_s:.0f} s before "
              f"the phases, then the live events; {total:,} at the end, of about "
              f"{result.event_bytes} bytes each ({total * result.event_bytes / 1e6:.1f} MB of "
              "bodies)")
    if any(p.closes for p in result.phases):
        print("\nreading sockets closed by the edge in a phase (code -1: lost without a "
              "close frame) are opened again before the next one")
    if result.error:
        print(f"\nhistory reads did not finish: {result.error}")


def _per_pass(p: Phase, baseline: Phase | None) -> float | None:
    extra = p.extra_ms(baseline)
    n_passes = passes(p.counters)
    return extra * p.sent / n_passes if extra is not None and n_passes else None


def _over(p: Phase, baseline: Phase | None) -> float | None:
    return None if baseline is None else p.edge_pct - baseline.edge_pct


def _scaled(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = 1000 * seconds
    return f"{ms:.2f}" if ms < 10 else f"{ms:,.0f}"


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
