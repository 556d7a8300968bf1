"""The edge's history and recovery counters (docs/protocol.md 17), from its ``/metrics``."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from bench.edge_metrics import http_get

PREFIXES = ("warren_edge_history_", "warren_edge_recoveries")


async def history_counters(port: int, timeout_s: float = 10.0) -> dict[str, float]:
    """Every sample of the edge's history metrics, named ``name`` or ``name{label=value}``;
    histograms as their ``_sum`` and ``_count``."""
    status, body = await http_get(port, "/metrics", timeout_s)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            name = sample.name
            if not name.startswith(PREFIXES) or name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            counters[f"{name}{{{labels}}}" if labels else name] = sample.value
    return counters


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """What each counter gained between two reads (only those that moved)."""
    return {name: value - before.get(name, 0.0) for name, value in after.items()
            if value != before.get(name, 0.0)}


def passes(counters: Mapping[str, float]) -> float:
    return counters.get("warren_edge_history_passes_total", 0.0)


def pass_seconds(counters: Mapping[str, float]) -> float:
    return counters.get("warren_edge_history_pass_seconds_sum", 0.0)
