"""The edge's own view of itself, over HTTP: its ``/metrics`` and a probe-like ``GET``."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

HISTORY_PREFIXES = ("warren_edge_history_", "warren_edge_recoveries")


async def http_get(port: int, path: str, timeout_s: float) -> tuple[int, bytes]:
    """``GET path`` on a fresh connection to 127.0.0.1 (as a probe does): status and body."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            response = await reader.read()  # HTTP/1.0: the server closes after answering
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@dataclass(frozen=True, slots=True)
class EdgeGauges:
    connections: float
    bindings: float
    closes: dict[str, float]
    slow_disconnects: float
    latency: dict[float, float]  # cumulative count of deliveries by latency bucket (le, s)

    def latency_since(self, before: EdgeGauges | None, q: float) -> float | None:
        """The bucket bound (s) under which a fraction ``q`` of the events this edge wrote
        since ``before`` were written: its own measure, envelope ts -> write to sockets."""
        bounds = sorted(self.latency)
        counts = [self.latency[b] - (before.latency.get(b, 0.0) if before else 0.0)
                  for b in bounds]
        if not counts or counts[-1] <= 0:
            return None
        for bound, count in zip(bounds, counts):
            if count >= q * counts[-1]:
                return bound
        return math.inf


async def metric_samples(port: int, timeout_s: float = 10.0) -> Iterator[Sample]:
    """Every sample of the edge's ``/metrics``."""
    status, body = await http_get(port, "/metrics", timeout_s)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return (sample for family in text_string_to_metric_families(body.decode())
            for sample in family.samples)


async def edge_gauges(port: int, timeout_s: float = 10.0) -> EdgeGauges:
    """The edge's own counts, from ``/metrics``."""
    values: dict[str, float] = {}
    closes: dict[str, float] = {}
    latency: dict[float, float] = {}
    for sample in await metric_samples(port, timeout_s):
        if sample.name == "warren_edge_closes_total":
            closes[sample.labels["code"]] = sample.value
        elif sample.name == "warren_edge_delivery_latency_seconds_bucket":
            latency[float(sample.labels["le"])] = sample.value
        else:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return EdgeGauges(
        connections=values.get("warren_edge_connections", 0.0),
        bindings=values.get("warren_edge_bindings", 0.0),
        closes=closes,
        slow_disconnects=values.get("warren_edge_slow_client_disconnects_total", 0.0),
        latency=latency,
    )


async def history_counters(port: int, timeout_s: float = 10.0) -> dict[str, float]:
    """Every sample of the edge's history and recovery metrics (docs/protocol.md 17),
    named ``name`` or ``name{label=value}``; histograms as their ``_sum`` and ``_count``."""
    counters: dict[str, float] = {}
    for sample in await metric_samples(port, timeout_s):
        name = sample.name
        if not name.startswith(HISTORY_PREFIXES) or name.endswith(("_bucket", "_created")):
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
