"""The fan-out bench with the history stream on and off (``bench.fanout --stream-ab N``).

Issue 16's constraint: with the stream in place (kept events published to
``warren.events.kept``, which feeds ``warren.events`` and the stream ``warren.history``),
fan-out throughput stays at least 95 % of what it is without the stream, and latency gets
no worse. Both configurations run in the same run, alternating (on, off, off, on, ...),
each a fresh edge and publisher given the same ``WARREN_HISTORY``; this module orders
them and compares the medians over the rounds.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Final

from bench.report import (
    MEMORY_HEADERS,
    ROW_HEADERS,
    TARGET_HEADERS,
    Row,
    SystemResult,
    _k,
    _ms,
    format_table,
    memory_lines,
    noise_lines,
    row_cells,
)
from bench.stream_floor import PublishFloor, publish_floor

ON: Final = "stream on"
OFF: Final = "stream off"
SETTINGS: Final = {ON: {"WARREN_HISTORY": "on"}, OFF: {"WARREN_HISTORY": "off"}}
THROUGHPUT_TARGET: Final = 0.95  # with the stream / without, peak fan-out
FLOOR_MESSAGES: Final = 20_000


def ab_configs(rounds: int) -> list[tuple[str, dict[str, str]]]:
    """``rounds`` pairs, alternating which goes first (ABBA...), so that a drift of the
    host's load over the run does not favour one side."""
    order: list[str] = []
    for n in range(rounds):
        order += [ON, OFF] if n % 2 == 0 else [OFF, ON]
    return [(label, SETTINGS[label]) for label in order]


async def floor_rounds(amqp_url: str, rounds: int, floors: list[PublishFloor]) -> None:
    """The broker's floor (:func:`bench.stream_floor.publish_floor`), kept and plain
    alternating as the configurations did, appended to ``floors``."""
    for n in range(rounds):
        for kept in ((True, False) if n % 2 == 0 else (False, True)):
            floors.append(await publish_floor(amqp_url, kept, FLOOR_MESSAGES))


FLOOR_HEADERS: Final = (
    "broker floor (no Warren code)", "rounds", "messages/s (median)",
    "broker CPU µs/msg (median)", "range", "client CPU µs/msg (median)",
)


def floor_lines(floors: Sequence[PublishFloor]) -> list[list[str]]:
    lines = []
    for kept, name in ((True, "with the stream"), (False, "without")):
        chosen = [f for f in floors if f.kept is kept]
        broker = [v for f in chosen if (v := f.per_message_us(f.broker_cpu_s)) is not None]
        client = [v for f in chosen if (v := f.per_message_us(f.client_cpu_s)) is not None]
        lines.append([
            name, str(len(chosen)), _k(_median([f.rate for f in chosen])),
            f"{_median(broker):.0f}" if broker else "-", _span(broker, ".0f"),
            f"{_median(client):.0f}" if client else "-",
        ])
    return lines


def by_label(results: Sequence[SystemResult]) -> dict[str, list[SystemResult]]:
    """The finished runs of each configuration, in run order."""
    grouped: dict[str, list[SystemResult]] = defaultdict(list)
    for result in results:
        if result.rows and not result.error:
            grouped[result.system].append(result)
    return grouped


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _span(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    return format(min(values), fmt) if len(values) == 1 else (
        f"{format(min(values), fmt)} … {format(max(values), fmt)}")


def scenarios_of(results: Sequence[SystemResult]) -> list[str]:
    seen: list[str] = []
    for result in results:
        for row in result.rows:
            if row.scenario not in seen:
                seen.append(row.scenario)
    return seen


PEAK_HEADERS: Final = (
    "scenario", "peak dlv/s on (median)", "rounds on", "peak dlv/s off (median)", "rounds off",
    "on / off",
)


def peak_lines(grouped: dict[str, list[SystemResult]], scenarios: Sequence[str]
               ) -> tuple[list[list[str]], list[list[str]]]:
    """The peak table and the throughput target lines."""
    lines, targets = [], []
    for scenario in scenarios:
        peaks = {label: [p for r in grouped.get(label, []) if (p := r.peak(scenario)) is not None]
                 for label in (ON, OFF)}
        on, off = _median(peaks[ON]), _median(peaks[OFF])
        ratio = on / off if on and off else None
        lines.append([
            scenario, _k(on), " ".join(_k(p) for p in peaks[ON]) or "-",
            _k(off), " ".join(_k(p) for p in peaks[OFF]) or "-",
            f"{100 * ratio:.1f} %" if ratio else "-",
        ])
        targets.append([
            f"{scenario} peak with the stream >= {100 * THROUGHPUT_TARGET:.0f} % of without",
            f"{100 * ratio:.1f} % ({_k(on)} / {_k(off)})" if ratio else "-",
            ("PASS" if ratio >= THROUGHPUT_TARGET else "FAIL") if ratio else "n/a",
        ])
    return lines, targets


LATENCY_HEADERS: Final = (
    "scenario", "target dlv/s", "p50 ms on", "p50 ms off", "p99 ms on (range)",
    "p99 ms off (range)", "p99 on vs off",
)


def _steps(results: Sequence[SystemResult], scenario: str) -> dict[int, list[Row]]:
    """The unsaturated steps of ``scenario`` by offered rate, over ``results``."""
    steps: dict[int, list[Row]] = defaultdict(list)
    for result in results:
        for row in result.rows:
            if row.scenario == scenario and not row.saturated:
                steps[row.target_dps].append(row)
    return steps


def latency_verdict(on: Sequence[float], off: Sequence[float]) -> str:
    """``not worse`` when the median with the stream is at most the median without;
    ``within noise`` when it is above it but within the range of the rounds without;
    else ``worse``."""
    m_on, m_off = _median(on), _median(off)
    if m_on is None or m_off is None:
        return "-"
    if m_on <= m_off:
        return "not worse"
    return "within noise" if m_on <= max(off) else "worse"


def latency_lines(grouped: dict[str, list[SystemResult]], scenarios: Sequence[str]
                  ) -> list[list[str]]:
    """Per scenario and offered rate that both held in every round (no saturation):
    the medians of p50 and p99 with and without the stream."""
    lines = []
    rounds = {label: len(grouped.get(label, [])) for label in (ON, OFF)}
    for scenario in scenarios:
        on_steps = _steps(grouped.get(ON, []), scenario)
        off_steps = _steps(grouped.get(OFF, []), scenario)
        for target in sorted(set(on_steps) & set(off_steps)):
            on, off = on_steps[target], off_steps[target]
            if len(on) < rounds[ON] or len(off) < rounds[OFF]:
                continue  # saturated in some round: compared through the peaks instead
            p50_on = [r.p50_ms for r in on if r.p50_ms is not None]
            p50_off = [r.p50_ms for r in off if r.p50_ms is not None]
            p99_on = [r.p99_ms for r in on if r.p99_ms is not None]
            p99_off = [r.p99_ms for r in off if r.p99_ms is not None]
            lines.append([
                scenario, _k(target), _ms(_median(p50_on)), _ms(_median(p50_off)),
                f"{_ms(_median(p99_on))} ({_span(p99_on, '.1f')})",
                f"{_ms(_median(p99_off))} ({_span(p99_off, '.1f')})",
                latency_verdict(p99_on, p99_off),
            ])
    return lines


ROUND_HEADERS: Final = (
    "round", "config", *("peak " + s for s in ("direct", "group", "broadcast")),
    "srv µs/dlv", "mq µs/msg", "pub µs/msg", "max other CPU%", "max steal %",
)


def round_lines(results: Sequence[SystemResult]) -> list[list[str]]:
    lines = []
    seen: dict[str, int] = defaultdict(int)
    for result in results:
        seen[result.system] += 1
        held = [r for r in result.rows if not r.saturated]
        costs = [r.server_us_per_delivery for r in held if r.server_us_per_delivery is not None]
        lines.append([
            str(seen[result.system]), result.system,
            *(_k(result.peak(s)) for s in ("direct", "group", "broadcast")),
            f"{statistics.median(costs):.1f}" if costs else "-",
            _per_message(held, "broker_cpu_pct"), _per_message(held, "publisher_cpu_pct"),
            f"{max((r.other_cpu_pct for r in result.rows), default=0.0):.0f}",
            f"{max((r.steal_pct for r in result.rows), default=0.0):.0f}",
        ])
    return lines


def _per_message(rows: Sequence[Row], column: str) -> str:
    """The median of a process's CPU µs per message published, from its CPU % in
    ``column``: where the stream's own cost lands (the broker, the publisher). Over the
    group steps when there are some: they publish the most messages, so a process's
    cost that does not depend on them weighs least."""
    chosen = [r for r in rows if r.scenario == "group"] or list(rows)
    costs = [getattr(r, column) / 100 / r.pub_mps * 1e6 for r in chosen if r.pub_mps]
    return f"{statistics.median(costs):.0f}" if costs else "-"


def print_ab_report(results: Sequence[SystemResult], floors: Sequence[PublishFloor],
                    markdown: bool) -> None:
    grouped = by_label(results)
    scenarios = scenarios_of(results)
    print()
    print(format_table(ROW_HEADERS, [row_cells(r) for res in results for r in res.rows],
                       markdown))
    print()
    print(format_table(MEMORY_HEADERS, memory_lines(results), markdown))
    print()
    print(format_table(ROUND_HEADERS, round_lines(results), markdown))
    peaks, targets = peak_lines(grouped, scenarios)
    print()
    print(format_table(PEAK_HEADERS, peaks, markdown))
    latency = latency_lines(grouped, scenarios)
    print()
    print(format_table(LATENCY_HEADERS, latency, markdown))
    worse = [line for line in latency if line[-1] == "worse"]
    targets.append([
        "latency with the stream no worse (p99 medians, unsaturated steps)",
        f"{len(latency) - len(worse)} of {len(latency)} steps not worse or within noise"
        if latency else "-",
        ("PASS" if not worse else "FAIL") if latency else "n/a",
    ])
    print()
    print(format_table(TARGET_HEADERS, targets, markdown))
    if floors:
        print()
        print(format_table(FLOOR_HEADERS, floor_lines(floors), markdown))
    for line in noise_lines(results):
        print(line)
    for result in results:
        if result.error:
            print(f"\n{result.system} did not finish: {result.error}")
