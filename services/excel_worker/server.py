"""Start-up and shutdown of one Excel worker process, in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import tornado.web
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from shared.catalogue import CommandType, Offer, advertise
from shared.db import create_schema, make_engine, session_factory
from shared.db.outage import RetryWhileUnavailable
from shared.db.exports import ExportStore
from shared.db.notifications import NotificationStore
from shared.lifecycle import Lifecycle
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command
from shared.messaging.work import WorkConsumer
from shared.service import listen, run_until_signalled
from shared.web import HealthHandler, MetricsHandler, ReadyHandler, log_request
from services.excel_worker.metrics import ExcelMetrics
from services.excel_worker.notify import RoutedPublisher
from services.excel_worker.process import build_context, warm_up
from services.excel_worker.registry import ReportRegistry, discover_reports
from services.excel_worker.retention import sweep
from services.excel_worker.settings import ExcelSettings
from services.excel_worker.worker import ExportWorker, WorkerDeps

log = logging.getLogger(__name__)

PREFETCH = 1  # one build at a time per replica; more replicas for more throughput
COUNTS_TIMEOUT_S: Final = 5.0


class TaskMetricsHandler(MetricsHandler):
    """``/metrics``, with the task table's counts by status read first (off the loop)."""

    def initialize(  # type: ignore[override]
        self, registry: CollectorRegistry, refresh: Callable[[], Awaitable[None]]
    ) -> None:
        super().initialize(registry)
        self._refresh = refresh

    async def get(self) -> None:  # type: ignore[override]
        await self._refresh()
        super().get()


class ExcelWorkerServer:
    """Owns the worker's resources. ``start`` builds them in order and registers each
    with the lifecycle (shared/lifecycle.py), ``stop`` closes them in reverse."""

    def __init__(self, settings: ExcelSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = ExcelMetrics(registry or CollectorRegistry())
        self.port = 0
        self._lifecycle = Lifecycle("excel_worker", deadline_s=settings.http.shutdown_deadline_s)
        self.connection: AbstractRobustConnection | None = None
        self.consumer: WorkConsumer | None = None
        self.worker: ExportWorker | None = None
        self.reports: ReportRegistry | None = None
        self._store: ExportStore | None = None
        self._executor: ThreadPoolExecutor | None = None

    def is_ready(self) -> bool:
        return (not self._lifecycle.closing and self.consumer is not None
                and self.consumer.is_ready())

    async def start(self) -> None:
        """Threads, database, broker, consumer, retention sweeps, then the listener; a
        failure closes what was started. ``stop`` closes them in the reverse order."""
        async with self._lifecycle.starting() as life:
            await self._start(life)

    async def _start(self, life: Lifecycle) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        # First: a replica with a broken report package refuses to start (registry.py).
        self.reports = reports = discover_reports(
            settings.report_references, settings.reports_enabled, settings.limits.maxima()
        )
        self._executor = executor = ThreadPoolExecutor(
            settings.db_threads, thread_name_prefix="excel-db"
        )
        life.callback(executor.shutdown, wait=False, cancel_futures=True)
        engine = make_engine(settings.common.database_url)
        life.callback(engine.dispose)
        await loop.run_in_executor(executor, create_schema, engine)
        sessions = session_factory(engine)
        self._store = store = ExportStore(sessions)
        await loop.run_in_executor(
            executor, lambda: settings.exports_dir.mkdir(parents=True, exist_ok=True)
        )
        context = build_context()
        await warm_up(context)

        self.connection = connection = await connect(
            settings.common.amqp_url, name=f"warren-{settings.common.instance_id}",
            outage_alert_s=settings.common.broker_outage_alert_s,
        )
        life.push_async_callback(connection.close)
        publisher = await Publisher.open(connection, settings.common.history)
        self.worker = ExportWorker(WorkerDeps(
            settings=settings, reports=reports, metrics=self.metrics, exports=store,
            notifications=NotificationStore(sessions), publisher=publisher,
            routed=RoutedPublisher(publisher), context=context, blocking=executor,
        ))
        self.consumer = consumer = WorkConsumer(
            connection, Command.EXCEL_CREATE, self.worker.handle, prefetch=PREFETCH,
            on_rejected=lambda _reason: self.metrics.dead_lettered.inc(),
            retry=RetryWhileUnavailable(),  # a task that meets the database away waits for it
        )
        life.push_async_callback(consumer.close)
        await consumer.start()
        # Offered once consumed. Withdrawn after the drain: stopping takes no new work at
        # once, and the work queue keeps what arrives meanwhile for the other replicas.
        advertiser = await advertise(connection, settings.common, "excel_worker", Offer(
            commands=(CommandType(Command.EXCEL_CREATE),), reports=tuple(reports.describe()),
        ))
        life.push_async_callback(advertiser.stop)
        life.push_async_callback(self._drain, consumer, bounded=False)
        life.create_task(self._sweep_forever(store), name="retention sweeps")

        app = tornado.web.Application([
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"is_ready": self.is_ready}),
            (r"/metrics", TaskMetricsHandler,
             {"registry": self.metrics.registry, "refresh": self._refresh_counts}),
        ], log_function=log_request)
        http, self.port = listen(app, settings.http)
        life.push_async_callback(http.close_all_connections)
        life.callback(http.stop)
        log.info("excel_worker ready", extra={"port": self.port,
                                              "instance": settings.common.instance_id,
                                              "exports_dir": str(settings.exports_dir)})

    async def _sweep_forever(self, store: ExportStore) -> None:
        settings, loop = self.settings, asyncio.get_running_loop()
        while True:  # until closing cancels it
            try:
                expired = await loop.run_in_executor(
                    self._executor, sweep, store, settings.exports_dir, settings.retention_s,
                    settings.build_timeout_s,
                )
                if expired:
                    self.metrics.expired.inc(expired)
                    log.info("expired exports deleted", extra={"count": expired})
            except Exception:
                log.warning("retention sweep failed; retrying next interval", exc_info=True)
            await asyncio.sleep(settings.sweep_interval_s)

    async def _refresh_counts(self) -> None:
        """The task table's counts by status; if they cannot be read, the last ones stay."""
        store = self._store
        if store is None:
            return
        try:
            async with asyncio.timeout(COUNTS_TIMEOUT_S):
                counts = await asyncio.get_running_loop().run_in_executor(
                    self._executor, store.count_by_status
                )
        except Exception:
            log.warning("task counts not read; /metrics shows the last ones", exc_info=True)
            return
        self.metrics.set_status_counts(counts)

    async def _drain(self, consumer: WorkConsumer) -> None:
        """Stop taking tasks and let the current one finish within the shutdown deadline;
        past it, the task is left unacknowledged for another replica."""
        deadline = self.settings.http.shutdown_deadline_s
        try:
            async with asyncio.timeout(deadline):
                await consumer.stop_consuming()
        except (TimeoutError, Exception):
            log.warning("could not cancel the consumer cleanly", exc_info=True)
        if not await consumer.drain(deadline):
            log.warning("shutdown deadline passed mid-task; leaving it unacknowledged")

    async def stop(self) -> None:
        """Stop taking tasks, let the current one finish within the deadline (else leave it
        unacknowledged for another replica), then close broker, database and threads.

        The broker may be away: the closing steps together take at most the shutdown
        deadline, after the drain's own.
        """
        if await self._lifecycle.aclose():  # else stopping already, and now stopped
            log.info("excel_worker stopped")


async def serve(settings: ExcelSettings) -> None:
    """Run a worker until SIGTERM or SIGINT."""
    await run_until_signalled(ExcelWorkerServer(settings), "excel_worker")
