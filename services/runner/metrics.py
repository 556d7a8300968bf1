"""The runner's Prometheus metrics, on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.db.runs import UNFINISHED, RunStatus

STOP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


class RunnerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.queued = Counter(
            "warren_runner_runs_queued_total", "Runs accepted into the runs queue by this replica.",
            registry=registry,
        )
        self.started = Counter(
            "warren_runner_runs_started_total", "Runs started on this replica, by job.", ["job"],
            registry=registry,
        )
        finished = Counter(
            "warren_runner_runs_finished_total",
            "Runs finished (as published by this replica), by status.",
            ["status"],
            registry=registry,
        )
        self.finished = {
            s: finished.labels(s.value) for s in RunStatus if s.value not in UNFINISHED
        }
        self.active = Gauge(
            "warren_runner_active_runs", "Runs executing on this replica.", registry=registry
        )
        lines = Counter(
            "warren_runner_lines_total", "Output lines published, by stream.", ["stream"],
            registry=registry,
        )
        self.lines = {s: lines.labels(s) for s in ("stdout", "stderr")}
        self.batches = Counter(
            "warren_runner_output_batches_total", "run.output events published.", registry=registry
        )
        self.lines_dropped = Counter(
            "warren_runner_lines_dropped_total",
            "Output lines not published because the broker stayed unavailable.",
            registry=registry,
        )
        self.refused = Counter(
            "warren_runner_commands_refused_total",
            "Commands answered with run.error, by code.",
            ["code"],
            registry=registry,
        )
        self.forwarded = Counter(
            "warren_runner_stops_forwarded_total",
            "run.stop commands forwarded to the replica that owns the run.",
            registry=registry,
        )
        self.stop_latency = Histogram(
            "warren_runner_stop_latency_seconds",
            "Time from a run.stop command's timestamp to the run.finished publish.",
            buckets=STOP_BUCKETS,
            registry=registry,
        )
