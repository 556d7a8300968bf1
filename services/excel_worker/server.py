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
from sqlalchemy import Engine
from tornado.httpserver import HTTPServer

from shared.db import create_schema, make_engine, session_factory
from shared.db.outage import RetryWhileUnavailable
from shared.db.exports import ExportStore
from shared.db.notifications import NotificationStore
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command
from shared.messaging.work import WorkConsumer
from shared.service import listen, run_until_signalled
from shared.web import HealthHandler, MetricsHandler, ReadyHandler, log_request
from services.excel_worker.metrics import ExcelMetrics
from services.excel_worker.notify import RoutedPublisher
from services.excel_worker.process import build_context, warm_up
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
    """Owns the worker's resources. ``start`` builds them in order, ``stop`` undoes it."""

    def __init__(self, settings: ExcelSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = ExcelMetrics(registry or CollectorRegistry())
        self.port = 0
        self.connection: AbstractRobustConnection | None = None
        self.consumer: WorkConsumer | None = None
        self.worker: ExportWorker | None = None
        self._engine: Engine | None = None
        self._store: ExportStore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._http: HTTPServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._stopped = False

    def is_ready(self) -> bool:
        return (not self._stopping.is_set() and self.consumer is not None
                and self.consumer.is_ready())

    async def start(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(settings.db_threads, thread_name_prefix="excel-db")
        self._engine = make_engine(settings.common.database_url)
        await loop.run_in_executor(self._executor, create_schema, self._engine)
        sessions = session_factory(self._engine)
        self._store = store = ExportStore(sessions)
        await loop.run_in_executor(
            self._executor, lambda: settings.exports_dir.mkdir(parents=True, exist_ok=True)
        )
        context = build_context()
        await warm_up(context)

        self.connection = connection = await connect(
            settings.common.amqp_url, name=f"warren-{settings.common.instance_id}",
            outage_alert_s=settings.common.broker_outage_alert_s,
        )
        publisher = await Publisher.open(connection)
        routed = await RoutedPublisher.open(connection)
        self.worker = ExportWorker(WorkerDeps(
            settings=settings, metrics=self.metrics, exports=store,
            notifications=NotificationStore(sessions), sessions=sessions, publisher=publisher,
            routed=routed, context=context, blocking=self._executor,
        ))
        self.consumer = WorkConsumer(
            connection, Command.EXCEL_CREATE, self.worker.handle, prefetch=PREFETCH,
            on_rejected=lambda _reason: self.metrics.dead_lettered.inc(),
            retry=RetryWhileUnavailable(),  # a task that meets the database away waits for it
        )
        await self.consumer.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(store))

        app = tornado.web.Application([
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"is_ready": self.is_ready}),
            (r"/metrics", TaskMetricsHandler,
             {"registry": self.metrics.registry, "refresh": self._refresh_counts}),
        ], log_function=log_request)
        self._http, self.port = listen(app, settings.http)
        log.info("excel_worker ready", extra={"port": self.port,
                                              "instance": settings.common.instance_id,
                                              "exports_dir": str(settings.exports_dir)})

    async def _sweep_forever(self, store: ExportStore) -> None:
        settings, loop = self.settings, asyncio.get_running_loop()
        while not self._stopping.is_set():
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
            try:
                await asyncio.wait_for(self._stopping.wait(), settings.sweep_interval_s)
            except TimeoutError:
                pass

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

    async def stop(self) -> None:
        """Stop taking tasks, let the current one finish within the deadline (else leave it
        unacknowledged for another replica), then close broker, database and threads."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        deadline = self.settings.http.shutdown_deadline_s
        if self._http is not None:
            self._http.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        try:
            async with asyncio.timeout(deadline):
                if self.consumer is not None:
                    await self.consumer.stop_consuming()
        except (TimeoutError, Exception):
            log.warning("could not cancel the consumer cleanly", exc_info=True)
        if self.consumer is not None:
            if not await self.consumer.drain(deadline):
                log.warning("shutdown deadline passed mid-task; leaving it unacknowledged")
            try:
                async with asyncio.timeout(deadline):
                    await self.consumer.close()
            except (TimeoutError, Exception):
                log.warning("consumer channel did not close cleanly", exc_info=True)
        try:
            async with asyncio.timeout(deadline):
                if self.connection is not None:
                    await self.connection.close()
        except TimeoutError:
            log.warning("broker connection did not close before the deadline")
        if self._http is not None:
            await self._http.close_all_connections()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._engine is not None:
            self._engine.dispose()
        log.info("excel_worker stopped")


async def serve(settings: ExcelSettings) -> None:
    """Run a worker until SIGTERM or SIGINT."""
    await run_until_signalled(ExcelWorkerServer(settings), "excel_worker")
