"""Rows of the fan-out bench, the targets from the issue, and the printed tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

GROUP_TARGET_DPS: Final = 87_000  # group and broadcast deliveries/s
PEER_RATIO_TARGET: Final = 4.0
IDLE_KB_TARGET: Final = 15.0
P99_TARGET_MS: Final = 10.0
P99_AT_DPS: Final = 50_000
LOSS_TOLERANCE: Final = 0.01  # a step losing more than this is not counted as reached


@dataclass(slots=True)
class Row:
    """One step: one scenario at one offered rate."""

    system: str
    scenario: str
    fanout: float
    target_dps: int  # deliveries/s asked for
    pub_mps: float  # messages/s actually published
    offered_dps: float  # deliveries/s actually offered: expected deliveries / publish window
    achieved_dps: float  # deliveries received / (first publish .. last receive)
    p50_ms: float | None
    p99_ms: float | None
    expected: int
    received: int
    server_us_per_delivery: float | None
    server_cpu_pct: float
    driver_cpu_pct: float
    publisher_cpu_pct: float
    broker_cpu_pct: float
    softirq_pct: float  # host softirq time: mostly the loopback TCP work of this bench
    other_cpu_pct: float  # host CPU outside the above: other programs, other kernel work
    steal_pct: float  # time the hypervisor gave this VM's CPUs to someone else
    server_rss_mb: float
    # the edge's own histogram: envelope ts -> the event written to its sockets, p99 as the
    # bucket bound it falls under (Warren only)
    server_p99_ms: float | None = None
    broker_restarted: bool = False
    note: str = ""

    @property
    def loss(self) -> float:
        return (self.expected - self.received) / self.expected if self.expected else 0.0

    @property
    def lossless(self) -> bool:
        return self.loss <= LOSS_TOLERANCE

    @property
    def saturated(self) -> bool:
        return bool(self.note)


@dataclass(slots=True)
class SystemResult:
    system: str
    clients: int
    connected: int = 0
    rss_empty_mb: float = 0.0
    rss_idle_mb: float = 0.0
    rows: list[Row] = field(default_factory=list)
    error: str | None = None

    @property
    def kb_per_idle(self) -> float | None:
        if not self.connected:
            return None
        return (self.rss_idle_mb - self.rss_empty_mb) * 1024 / self.connected

    def peak(self, scenario: str) -> float | None:
        """The highest delivery rate of a scenario over its steps with no loss."""
        rates = [r.achieved_dps for r in self.rows if r.scenario == scenario and r.lossless]
        return max(rates) if rates else None

    def p99_at(self, scenario: str, target_dps: int) -> float | None:
        for row in self.rows:
            if row.scenario == scenario and row.target_dps == target_dps:
                return row.p99_ms
        return None


def saturation_note(row: Row, nominal_mps: float) -> str:
    """Why a step counts as the scenario's saturation point, or "" if it does not."""
    if row.broker_restarted:
        return "broker restarted"
    if row.pub_mps < 0.95 * nominal_mps:
        return "sat: publisher"
    if not row.lossless:
        return "sat: loss"
    if row.achieved_dps < 0.9 * row.target_dps:
        return "sat: backlog"
    return ""


ROW_HEADERS: Final = (
    "system", "scenario", "fan-out", "target dlv/s", "pub msg/s", "offered dlv/s",
    "achieved dlv/s", "p50 ms", "p99 ms", "edge p99 ≤ ms", "loss %", "srv µs/dlv", "srv CPU%",
    "drv CPU%", "pub CPU%", "mq CPU%", "sirq %", "other CPU%", "steal %", "srv RSS MB", "note",
)


def row_cells(row: Row) -> list[str]:
    return [
        row.system,
        row.scenario,
        f"{row.fanout:g}",
        _k(row.target_dps),
        _n(row.pub_mps),
        _k(row.offered_dps),
        _k(row.achieved_dps),
        _ms(row.p50_ms),
        _ms(row.p99_ms),
        _ms(row.server_p99_ms),
        f"{100 * row.loss:.2f}",
        "-" if row.server_us_per_delivery is None else f"{row.server_us_per_delivery:.1f}",
        f"{row.server_cpu_pct:.0f}",
        f"{row.driver_cpu_pct:.0f}",
        f"{row.publisher_cpu_pct:.0f}",
        f"{row.broker_cpu_pct:.0f}",
        f"{row.softirq_pct:.0f}",
        f"{max(0.0, row.other_cpu_pct):.0f}",
        f"{row.steal_pct:.0f}",
        f"{row.server_rss_mb:.1f}",
        row.note,
    ]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def memory_lines(results: Sequence[SystemResult]) -> list[list[str]]:
    return [
        [
            r.system,
            str(r.connected),
            f"{r.rss_empty_mb:.1f}",
            f"{r.rss_idle_mb:.1f}",
            "-" if r.kb_per_idle is None else f"{r.kb_per_idle:.1f}",
        ]
        for r in results
    ]


MEMORY_HEADERS: Final = ("system", "idle clients", "RSS 0 clients MB", "RSS idle MB", "KB/idle socket")
TARGET_HEADERS: Final = ("target", "measured", "result")


def target_lines(warren: SystemResult, peer: SystemResult | None) -> list[list[str]]:
    lines: list[list[str]] = []
    for scenario in ("group", "broadcast"):
        peak = warren.peak(scenario)
        lines.append([
            f"Warren {scenario} fan-out >= {_k(GROUP_TARGET_DPS)} dlv/s",
            _k(peak) if peak is not None else "-",
            _verdict(peak is not None and peak >= GROUP_TARGET_DPS),
        ])
    for scenario in ("group", "broadcast"):
        ours, theirs = warren.peak(scenario), peer.peak(scenario) if peer else None
        ratio = ours / theirs if ours and theirs else None
        lines.append([
            f"Warren / peer {scenario} fan-out >= {PEER_RATIO_TARGET:g}x",
            f"{ratio:.1f}x ({_k(ours)} / {_k(theirs)})" if ratio else "- (no peer row)",
            _verdict(ratio is not None and ratio >= PEER_RATIO_TARGET) if ratio else "n/a",
        ])
    kb = warren.kb_per_idle
    lines.append([
        f"Warren KB per idle socket <= {IDLE_KB_TARGET:g}",
        "-" if kb is None else f"{kb:.1f}",
        _verdict(kb is not None and kb <= IDLE_KB_TARGET),
    ])
    for scenario in ("group", "broadcast"):
        p99 = warren.p99_at(scenario, P99_AT_DPS)
        lines.append([
            f"Warren {scenario} p99 < {P99_TARGET_MS:g} ms at {_k(P99_AT_DPS)} dlv/s",
            _ms(p99) if p99 is not None else "- (step not run)",
            _verdict(p99 is not None and p99 < P99_TARGET_MS),
        ])
    return lines


def ratio_lines(warren: SystemResult, peer: SystemResult) -> list[list[str]]:
    lines = []
    for scenario in ("direct", "group", "broadcast"):
        ours, theirs = warren.peak(scenario), peer.peak(scenario)
        ratio = f"{ours / theirs:.1f}x" if ours and theirs else "-"
        lines.append([scenario, _k(ours), _k(theirs), ratio])
    return lines


RATIO_HEADERS: Final = ("scenario", "Warren peak dlv/s", "peer peak dlv/s", "Warren / peer")


NOISY_OTHER_PCT: Final = 20.0
NOISY_STEAL_PCT: Final = 10.0


def noise_lines(results: Sequence[SystemResult]) -> list[str]:
    """Warnings when something besides the bench used the CPUs during a step."""
    rows = [r for result in results for r in result.rows]
    if not rows:
        return []
    other = max(rows, key=lambda r: r.other_cpu_pct)
    steal = max(rows, key=lambda r: r.steal_pct)
    lines = []
    if other.other_cpu_pct >= NOISY_OTHER_PCT:
        lines.append(f"\nwarning: up to {other.other_cpu_pct:.0f}% of a core went to other work "
                     f"({other.system} {other.scenario} {_k(other.target_dps)}): "
                     "another program was busy; rerun on a quiet host")
    if steal.steal_pct >= NOISY_STEAL_PCT:
        lines.append(f"\nwarning: up to {steal.steal_pct:.0f}% of a core was stolen by the "
                     f"hypervisor ({steal.system} {steal.scenario} {_k(steal.target_dps)})")
    return lines


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _k(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def _n(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"
