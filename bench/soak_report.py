"""What the soak measured, and the tables it prints (see bench/README.md, *Soak*)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bench.edge_metrics import EdgeGauges
from bench.report import format_table
from bench.soak_driver import KINDS
from bench.stats import Histogram

FLAT_TOLERANCE: Final = 0.02  # RSS growth after warm-up, as a share of RSS, still "flat"


@dataclass(slots=True)
class Sample:
    """One row of the sample table: the edge and the clients over one sampling period."""

    t_s: float
    rss_mb: float
    fds: int
    open: int
    gauge: float
    unexpected: int  # client-side closes so far that the bench did not ask for
    dlv_s: float
    by_kind: dict[str, float]
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    edge_p99_ms: float | None  # the edge's own histogram: ts -> written, a bucket bound
    cpu: dict[str, float]
    load: float


@dataclass(slots=True)
class Result:
    """Everything one soak measured, filled as it goes: a run stopped half-way still
    reports what it has."""

    connected: int = 0
    connect_s: float = 0.0
    rss_empty_mb: float = 0.0
    rss_idle_mb: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    published: dict[str, Histogram] = field(default_factory=lambda: {k: Histogram() for k in KINDS})
    origin: dict[str, Histogram] = field(default_factory=lambda: {k: Histogram() for k in KINDS})
    measured_counts: Counter[str] = field(default_factory=Counter)  # after warm-up
    measured_s: float = 0.0
    totals: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    closes: Counter[str] = field(default_factory=Counter)
    final_open: int = 0
    edge_final: EdgeGauges | None = None
    gauge_after_disconnect: float | None = None
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    error: str | None = None

    @property
    def unexpected(self) -> int:
        return sum(self.closes.values())



SAMPLE_HEADERS: Final = (
    "t s", "edge RSS MB", "edge fds", "open", "gauge", "unexp. closes", "dlv/s",
    "direct", "group", "bcast", "run", "p50 ms", "p99 ms", "max ms", "edge p99 ms",
    "edge CPU%", "run CPU%", "drv CPU%", "mq CPU%", "other CPU%", "load",
)


def sample_cells(s: Sample) -> list[str]:
    """A row of the sample table; also printed while the soak runs."""
    return [
        f"{s.t_s:.0f}", f"{s.rss_mb:.1f}", str(s.fds), str(s.open), f"{s.gauge:.0f}",
        str(s.unexpected), f"{s.dlv_s:,.0f}",
        *(f"{s.by_kind[k]:,.0f}" for k in KINDS),
        _ms(s.p50_ms), _ms(s.p99_ms), _ms(s.max_ms),
        "-" if s.edge_p99_ms is None else f"<= {_ms(s.edge_p99_ms)}",
        *(f"{s.cpu[k]:.0f}" for k in ("edge", "runners", "drivers", "broker", "other")),
        f"{s.load:.1f}",
    ]


def rss_trend(samples: Sequence[Sample], warmup_s: float) -> tuple[float, float, float] | None:
    """After warm-up: (least-squares slope in MB/min, last - first MB, max - min MB)."""
    after = [s for s in samples if s.t_s >= warmup_s - 1e-6]
    if len(after) < 2:
        return None
    xs = [s.t_s / 60 for s in after]
    ys = [s.rss_mb for s in after]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, ys[-1] - ys[0], max(ys) - min(ys)


KIND_HEADERS: Final = (
    "kind", "msgs sent", "acked", "expected dlv", "received dlv", "lost", "dlv/s",
    "p50 ms", "p99 ms", "p99.9 ms", "max ms", "origin p50 ms", "origin p99 ms",
)


def kind_lines(result: Result) -> list[list[str]]:
    """Sends, deliveries and latencies by kind, then over all deliveries."""
    totals = result.totals
    lines = []
    for kind in KINDS:
        published, origin = result.published[kind], result.origin[kind]
        rate = result.measured_counts[kind] / result.measured_s if result.measured_s else 0.0
        received = int(totals.get("received", {}).get(kind, 0))
        if kind == "run":
            runs = totals.get("runs", Counter())
            sent = acked = str(runs["started"])
            expected = f"{runs['lines_reported']:,} lines"
            got = f"{received:,} ({runs['lines_received']:,} lines)"
            lost = f"{runs['lines_reported'] - runs['lines_received']:,} lines"
        else:
            acked_n = sum(n for key, n in totals.get("acked", {}).items()
                          if key == kind or key.startswith(f"{kind}:"))
            sent, acked = f"{totals.get('sent', {}).get(kind, 0):,}", f"{acked_n:,}"
            want = result.expected.get(kind, 0)
            expected, got, lost = f"{want:,}", f"{received:,}", f"{want - received:,}"
        lines.append([
            kind, sent, acked, expected, got, lost, f"{rate:,.0f}",
            *(_ms_of(published, q) for q in (0.5, 0.99, 0.999, 1.0)),
            _ms_of(origin, 0.5), _ms_of(origin, 0.99),
        ])
    everything = Histogram()
    for histogram in result.published.values():
        everything.merge_sparse(histogram.to_sparse())
    total_rate = sum(result.measured_counts.values()) / result.measured_s if result.measured_s else 0
    lines.append(["all", "", "", "", "", "", f"{total_rate:,.0f}",
                  *(_ms_of(everything, q) for q in (0.5, 0.99, 0.999, 1.0)), "", ""])
    return lines


def summary_lines(result: Result, warmup_s: float) -> list[list[str]]:
    """Memory, connections and losses, with the verdicts."""
    trend = rss_trend(result.samples, warmup_s)
    warm = next((s for s in result.samples if s.t_s >= warmup_s - 1e-6), None)
    lines = [
        ["connections", (f"{result.connected:,} connected in {result.connect_s:.0f} s, "
                         f"{result.final_open:,} open at the end"), ""],
        ["edge RSS before clients / all idle",
         f"{result.rss_empty_mb:.1f} / {result.rss_idle_mb:.1f} MB", ""],
    ]
    if trend is not None and warm is not None:
        slope, growth, spread = trend
        last = result.samples[-1]
        window_min = (last.t_s - warm.t_s) / 60
        flat = abs(slope * window_min) <= FLAT_TOLERANCE * warm.rss_mb
        lines += [
            [f"edge RSS after warm-up ({warmup_s:.0f} s)",
             (f"{warm.rss_mb:.1f} -> {last.rss_mb:.1f} MB ({growth:+.1f} MB over "
              f"{window_min:.1f} min; max-min {spread:.1f} MB)"), ""],
            ["edge RSS slope after warm-up", f"{slope:+.3f} MB/min ({60 * slope:+.1f} MB/h)",
             f"{'PASS' if flat else 'FAIL'} (flat: trend under {100 * FLAT_TOLERANCE:g} % of RSS)"],
            ["edge fds after warm-up", f"{warm.fds} -> {last.fds}", ""],
        ]
    closes = ", ".join(f"{n} x {code}" for code, n in sorted(result.closes.items())) or "none"
    lines.append(["unexpected disconnects (client side)", f"{result.unexpected} ({closes})",
                  "PASS" if result.unexpected == 0 and result.error is None else "FAIL"])
    edge = result.edge_final
    if edge is not None:
        edge_closes = ", ".join(f"{n:.0f} x {c}" for c, n in sorted(edge.closes.items())) or "none"
        lines.append(["edge: closes it made / slow-client closes",
                      f"{edge_closes} / {edge.slow_disconnects:.0f}", ""])
    if result.gauge_after_disconnect is not None:
        lines.append(["edge connection gauge after the clients closed",
                      f"{result.gauge_after_disconnect:.0f}", ""])
    totals = result.totals
    if totals:
        lost = sum(result.expected.values()) - sum(
            int(totals["received"].get(k, 0)) for k in ("direct", "group", "broadcast"))
        runs = totals["runs"]
        lost_lines = runs["lines_reported"] - runs["lines_received"]
        lines.append(["messages lost (expected - received) / run lines lost",
                      f"{lost:,} / {lost_lines:,}", ""])
        lines.append(["send errors / unanswered / skipped (socket closed)",
                      (f"{dict(totals['errors']) or 0} / {totals['unanswered']} / "
                       f"{totals['unsent']}"), ""])
        outcome = ", ".join(f"{k} {v}" for k, v in sorted(runs.items())
                            if k.startswith(("finished", "refused")) or k == "timeouts")
        lines.append(["runs", f"{runs['started']} started; {outcome}", ""])
    lines.append(["load average (1 min) at start / end",
                  f"{result.load_start[0]:.1f} / {result.load_end[0]:.1f}", ""])
    return lines


SUMMARY_HEADERS: Final = ("measure", "value", "result")


def print_report(result: Result, warmup_s: float, markdown: bool) -> None:
    print()
    print(format_table(SAMPLE_HEADERS, [sample_cells(s) for s in result.samples], markdown))
    print()
    print(f"After warm-up ({warmup_s:.0f} s), {result.measured_s:.0f} s measured; latency "
          "is envelope ts -> receipt, origin is client send / job print -> receipt:")
    print(format_table(KIND_HEADERS, kind_lines(result), markdown))
    print()
    print(format_table(SUMMARY_HEADERS, summary_lines(result, warmup_s), markdown))
    if result.error:
        print(f"\nthe soak did not finish: {result.error}")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _ms_of(histogram: Histogram, q: float) -> str:
    value = histogram.percentile(q)
    return _ms(None if value is None else 1000 * value)

