"""What the storm measured, round by round, and the tables it prints (see bench/README.md,
*Connection storm*)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from bench.report import TARGET_HEADERS, format_table
from bench.stats import Histogram


@dataclass(slots=True)
class ReadyPoll:
    """One ``GET /readyz``, as a kubelet's probe."""

    at_s: float  # since the round started
    status: int  # 0: no answer (error or timeout)
    seconds: float


@dataclass(slots=True)
class Round:
    """One storm (or the warm-up): what the drivers, the edge and the broker showed."""

    name: str
    offered: int = 0
    attempted: int = 0
    connected: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    upgrade: Histogram = field(default_factory=Histogram)  # start -> 101 Switching Protocols
    latency: Histogram = field(default_factory=Histogram)  # start -> welcome
    lag: Histogram = field(default_factory=Histogram)
    dropped_in_hold: int = 0
    client_closes: Counter[str] = field(default_factory=Counter)  # codes the clients saw
    close_timeouts: int = 0
    stuck: int = 0
    welcome_span_s: float = 0.0
    offered_s: float = 0.0
    polls: list[ReadyPoll] = field(default_factory=list)
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    gauge_peak: float = 0.0
    gauge_after: float | None = None
    zero_after_s: float | None = None  # from the last driver reply to gauge 0
    unbound_after_s: float | None = None  # ... to the broker holding only broadcast
    listen_drops: int = 0  # host-wide SYNs dropped on full accept queues (/proc/net/netstat)
    bindings_after: float | None = None  # the edge's gauge (broadcast counts as one)
    broker_bindings_after: int | None = None
    edge_closes: dict[str, float] = field(default_factory=dict)  # the edge's, by close code
    cpu: dict[str, float] = field(default_factory=dict)  # % of a core over the storm
    load: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def not_ready(self) -> list[ReadyPoll]:
        return [p for p in self.polls if p.status != 200]


@dataclass(slots=True)
class Result:
    """Every round so far: a run stopped half-way still reports what it has."""

    rss_start_mb: float = 0.0
    rounds: list[Round] = field(default_factory=list)
    load_start: float = 0.0
    error: str | None = None


ROUND_HEADERS: Final = (
    "round", "offered", "offered/s", "made", "failed", "made/s", "101 p50 ms", "101 p99 ms",
    "welcome p50 ms", "p90 ms", "p99 ms", "max ms", "sched lag p99 ms", "open peak (gauge)",
    "readyz polls", "non-200", "slow", "readyz p99 ms", "readyz max ms", "edge CPU%",
    "drv CPU%", "mq CPU%", "other CPU%", "load",
)


def round_cells(r: Round, slow_s: float) -> list[str]:
    """A row of the round table; also printed after each round."""
    ready = Histogram()
    for poll in r.polls:
        ready.add(poll.seconds)
    slow = sum(1 for p in r.polls if p.seconds > slow_s)
    return [
        r.name, f"{r.offered:,}", f"{r.attempted / r.offered_s:,.0f}" if r.offered_s else "-",
        f"{r.connected:,}", f"{r.failed:,}",
        f"{r.connected / r.welcome_span_s:,.0f}" if r.welcome_span_s else "-",
        _ms(r.upgrade.percentile(0.5)), _ms(r.upgrade.percentile(0.99)),
        _ms(r.latency.percentile(0.5)), _ms(r.latency.percentile(0.9)),
        _ms(r.latency.percentile(0.99)), _ms(r.latency.percentile(1.0)),
        _ms(r.lag.percentile(0.99)), f"{r.gauge_peak:,.0f}", str(len(r.polls)),
        str(len(r.not_ready)), str(slow), _ms(ready.percentile(0.99)), _ms(ready.percentile(1.0)),
        *(f"{r.cpu.get(k, 0.0):.0f}" for k in ("edge", "drivers", "broker", "other")),
        f"{r.load:.1f}",
    ]


MEMORY_HEADERS: Final = (
    "round", "RSS before MB", "RSS peak MB", "RSS after MB", "retained MB", "gauge peak",
    "gauge after", "gauge 0 after s", "unbound after s", "bindings after (edge / broker)",
    "SYNs dropped",
)


def memory_cells(r: Round, start_mb: float) -> list[str]:
    return [
        r.name, f"{r.rss_before_mb:.1f}", f"{r.rss_peak_mb:.1f}", f"{r.rss_after_mb:.1f}",
        f"{r.rss_after_mb - r.rss_before_mb:+.1f} (since start {r.rss_after_mb - start_mb:+.1f})",
        f"{r.gauge_peak:,.0f}", "-" if r.gauge_after is None else f"{r.gauge_after:.0f}",
        "-" if r.zero_after_s is None else f"{r.zero_after_s:.1f}",
        "-" if r.unbound_after_s is None else f"{r.unbound_after_s:.1f}",
        (f"{'-' if r.bindings_after is None else f'{r.bindings_after:.0f}'} / "
         f"{'-' if r.broker_bindings_after is None else r.broker_bindings_after}"),
        f"{r.listen_drops:,}",
    ]


def detail_lines(result: Result, slow_s: float) -> list[str]:
    """What went wrong in each round, in words: failed connects, closes, slow probes."""
    lines = []
    for r in result.rounds:
        if r.failures:
            reasons = ", ".join(f"{n:,} {reason}" for reason, n in r.failures.most_common())
            lines.append(f"{r.name}: failed connects: {reasons}")
        if r.edge_closes:
            closes = ", ".join(f"{n:,.0f} x {code}" for code, n in sorted(r.edge_closes.items()))
            lines.append(f"{r.name}: the edge closed sockets: {closes}")
        if r.dropped_in_hold or r.close_timeouts or r.stuck:
            lines.append(f"{r.name}: closed by the edge during the hold {r.dropped_in_hold} "
                         f"({dict(r.client_closes)}), "
                         f"no close answer {r.close_timeouts}, unfinished {r.stuck}")
        bad = [p for p in r.polls if p.status != 200 or p.seconds > slow_s]
        if bad:
            shown = ", ".join(f"{p.at_s:.1f} s: {p.status or 'no answer'} in {1000 * p.seconds:.0f} ms"
                              for p in bad[:8])
            lines.append(f"{r.name}: /readyz not ready or slow ({len(bad)}): {shown}"
                         + (" ..." if len(bad) > 8 else ""))
    return lines


def print_report(result: Result, rate: float, slow_s: float, markdown: bool) -> None:
    """The tables for ``rate`` connects/s offered and probes slower than ``slow_s``."""
    rounds = result.rounds
    print()
    print(format_table(ROUND_HEADERS, [round_cells(r, slow_s) for r in rounds], markdown))
    print()
    print(format_table(MEMORY_HEADERS, [memory_cells(r, result.rss_start_mb) for r in rounds],
                       markdown))
    details = detail_lines(result, slow_s)
    if details:
        print()
        for line in details:
            print(line)
    storms = [r for r in rounds if r.name != "warm-up"]
    if storms:
        print()
        print(format_table(TARGET_HEADERS, target_lines(storms, rate, slow_s), markdown))
    if result.error:
        print(f"\nthe storm did not finish: {result.error}")


SHED: Final = "HTTP 503"  # the driver's name for a refusal with 503 (overloaded)


def target_lines(storms: Sequence[Round], rate: float, slow_s: float) -> list[list[str]]:
    """The issue's storm (``rate`` connects/s offered) and what must hold through it: the
    edge stays ready, answers every connect at once (a welcome, or a refusal that says
    when to retry), and gives its memory back. How many it welcomes a second is reported:
    it is what one edge process serves on this machine, not a target."""
    offered = min(r.attempted / r.offered_s if r.offered_s else 0.0 for r in storms)
    served = min(r.connected / r.welcome_span_s if r.welcome_span_s else 0.0 for r in storms)
    not_ready = sum(len(r.not_ready) for r in storms)
    slow = sum(1 for r in storms for p in r.polls if p.seconds > slow_s)
    shed = sum(r.failures[SHED] for r in storms)
    other = sum(r.failed for r in storms) - shed
    gauge_zero = all(r.gauge_after == 0 for r in storms)
    first, last = storms[0], storms[-1]
    growth = last.rss_after_mb - first.rss_after_mb
    # What an edge keeps after a storm is the high-water mark of sockets open at once
    # (freed memory is reused, not returned): a later round may keep more only for the
    # sockets by which its peak passed the earlier ones, at the first round's cost each.
    socket_mb = (first.rss_peak_mb - first.rss_before_mb) / first.gauge_peak if first.gauge_peak else 0.0
    higher_peak = max(0.0, last.gauge_peak - max(r.gauge_peak for r in storms[:-1])) if len(storms) > 1 else 0.0
    allowed = max(2.0, 0.02 * first.rss_after_mb) + higher_peak * socket_mb
    return [
        [f"{rate:,.0f} connects/s offered", f"{offered:,.0f}/s (slowest round)",
         _verdict(offered >= 0.95 * rate)],
        ["every connect welcomed or refused at once (503 overloaded, Retry-After)",
         (f"{sum(r.connected for r in storms):,} welcomed, {shed:,} refused, "
          f"{other:,} otherwise (timed out, reset, closed)"), _verdict(other == 0)],
        ["connects welcomed per second (reported)", f"{served:,.0f}/s (slowest round)", "-"],
        [f"/readyz: 200 within {slow_s:g} s on every poll",
         f"{not_ready} not 200, {slow} slower", _verdict(not_ready == 0 and slow == 0)],
        ["connection gauge back to 0 after every round",
         ", ".join("-" if r.gauge_after is None else f"{r.gauge_after:.0f}" for r in storms),
         _verdict(gauge_zero)],
        ["memory released: RSS after the last round - after the first",
         f"{growth:+.1f} MB (after each: "
         + ", ".join(f"{r.rss_after_mb:.1f}" for r in storms)
         + f"; allowed {allowed:.1f}: 2 MB or 2 %, + {higher_peak:,.0f} sockets more at the peak"
         f" x {1024 * socket_mb:.1f} KB)",
         _verdict(growth <= allowed) if len(storms) > 1 else "n/a"],
    ]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = 1000 * seconds
    return f"{ms:.2f}" if ms < 10 else f"{ms:,.0f}"

