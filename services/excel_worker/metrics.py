"""The Excel worker's Prometheus metrics, on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.db.exports import ExportStatus

BUILD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ExcelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.tasks = Counter(
            "warren_excel_tasks_total",
            "Tasks handled by this process, by outcome: done, failed, invalid, "
            "duplicate (already final).",
            ["status"],
            registry=registry,
        )
        self.by_status = Gauge(
            "warren_excel_tasks_by_status",
            "Tasks in the task table, by status (all replicas; read when /metrics is scraped).",
            ["status"],
            registry=registry,
        )
        self.running = Gauge(
            "warren_excel_tasks_running", "Tasks being built by this process.", registry=registry
        )
        self.build_seconds = Histogram(
            "warren_excel_build_duration_seconds",
            "Wall time of one successful build, child start to file written, by report.",
            ["report"],
            buckets=BUILD_BUCKETS,
            registry=registry,
        )
        self.rows = Counter(
            "warren_excel_rows_written_total", "Data rows written to stored files.",
            registry=registry,
        )
        self.retries = Counter(
            "warren_excel_retries_total", "Builds retried after a failure.", registry=registry
        )
        self.dead_lettered = Counter(
            "warren_excel_dead_lettered_total",
            "Commands sent to the dead-letter queue (retries exhausted or unusable).",
            registry=registry,
        )
        self.expired = Counter(
            "warren_excel_files_expired_total", "Files deleted by retention.", registry=registry
        )
        self.notifications = Counter(
            "warren_excel_notifications_total",
            "Done/failed notifications, by how the live event went: routed (user online) "
            "or pending.",
            ["delivery"],
            registry=registry,
        )

    def set_status_counts(self, counts: dict[str, int]) -> None:
        for status in ExportStatus:
            self.by_status.labels(status.value).set(counts.get(status.value, 0))
