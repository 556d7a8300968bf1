"""Start-up and shutdown of one runner replica, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from tornado.httpserver import HTTPServer

from shared.db import create_schema, make_engine, session_factory
from shared.db.outage import RetryWhileUnavailable
from shared.db.runs import RunStore
from shared.db.users import UserStore
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command
from shared.messaging.work import WorkConsumer
from shared.service import listen, run_until_signalled
from services.runner.app import make_app
from services.runner.control import ControlLink
from services.runner.dispatch import RunQueue, declare_runs_queue
from services.runner.jobs import JOBS
from services.runner.manager import RunManager
from services.runner.metrics import RunnerMetrics
from services.runner.settings import RunnerSettings
from services.runner.stopping import StopService

log = logging.getLogger(__name__)


class RunnerServer:
    """Owns the replica's resources. ``start`` builds them in order, ``stop`` undoes it."""

    def __init__(self, settings: RunnerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = RunnerMetrics(registry or CollectorRegistry())
        self.port = 0
        self.manager: RunManager | None = None
        self._draining = False
        self._stopped = False
        self._executor: ThreadPoolExecutor | None = None
        self._engine: Engine | None = None
        self._connection: AbstractRobustConnection | None = None
        self._control: ControlLink | None = None
        self._queue: RunQueue | None = None
        self._starts: WorkConsumer | None = None
        self._runs: WorkConsumer | None = None
        self._stops: WorkConsumer | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._http: HTTPServer | None = None

    @property
    def replica(self) -> str:
        return self.settings.common.instance_id

    def is_ready(self) -> bool:
        parts = (self._control, self._starts, self._runs, self._stops)
        return not self._draining and all(p is not None and p.is_ready() for p in parts)

    async def start(self) -> None:
        settings = self.settings
        self._executor = ThreadPoolExecutor(settings.db_threads, thread_name_prefix="runner-db")
        self._engine = make_engine(settings.common.database_url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, create_schema, self._engine)
        sessions = session_factory(self._engine)

        self._connection = connection = await connect(
            settings.common.amqp_url, name=f"warren-{self.replica}",
            outage_alert_s=settings.common.broker_outage_alert_s,
        )
        publisher = await Publisher.open(connection)
        self._queue = queue = RunQueue(connection)
        await queue.start()
        self.manager = manager = RunManager(
            settings, JOBS, RunStore(sessions), UserStore(sessions), publisher, queue,
            self.metrics, self._executor,
        )
        stops = StopService(manager)
        self._control = stops.control = ControlLink(connection, self.replica, stops.handle_control)
        await self._control.start()
        manager.owner_alive = stops.owner_alive
        await manager.fail_own_stale_runs()
        self._heartbeat = asyncio.create_task(self._beat())

        app = make_app(self.metrics.registry, self.is_ready)
        self._http, self.port = listen(app, settings.http)
        retry = RetryWhileUnavailable()  # a command that meets the database away waits for it
        self._stops = WorkConsumer(
            connection, Command.RUN_STOP, stops.handle_command, prefetch=settings.command_prefetch,
            retry=retry,
        )
        await self._stops.start()
        # The runs queue's prefetch is this replica's number of slots.
        self._runs = WorkConsumer(
            connection, Command.RUN_START, manager.handle_run, prefetch=settings.max_concurrent,
            declare=declare_runs_queue, retry=retry,
        )
        await self._runs.start()
        self._starts = WorkConsumer(
            connection, Command.RUN_START, manager.handle_start,
            prefetch=settings.command_prefetch, retry=retry,
        )
        await self._starts.start()
        log.info("runner ready", extra={"port": self.port, "instance": self.replica,
                                        "max_concurrent": settings.max_concurrent})

    async def _beat(self) -> None:
        assert self.manager is not None
        while True:
            try:
                await self.manager.heartbeat()
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(self.settings.heartbeat_s)

    async def stop(self) -> None:
        """Take no new runs, end the running ones within the deadline, then close it all."""
        if self._stopped:
            return
        self._stopped = True
        self._draining = True
        if self.manager is not None:
            self.manager.stop_accepting()
        deadline = self.settings.http.shutdown_deadline_s
        try:
            async with asyncio.timeout(deadline):
                for consumer in (self._starts, self._runs):
                    if consumer is not None:
                        await consumer.stop_consuming()
        except (TimeoutError, Exception):
            log.warning("could not cancel the start and run consumers", exc_info=True)
        if self.manager is not None:
            await self.manager.shutdown(deadline)
        for consumer in (self._starts, self._runs, self._stops):
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop_consuming()
                await consumer.drain(2.0)
                await consumer.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        try:
            async with asyncio.timeout(deadline):
                if self._control is not None:
                    await self._control.close()
                if self._queue is not None:
                    await self._queue.close()
                if self._connection is not None:
                    await self._connection.close()
        except (TimeoutError, Exception):
            log.warning("broker connection did not close cleanly", exc_info=True)
        if self._http is not None:
            self._http.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._engine is not None:
            self._engine.dispose()
        log.info("runner stopped")


async def serve(settings: RunnerSettings) -> None:
    """Run a replica until SIGTERM or SIGINT."""
    await run_until_signalled(RunnerServer(settings), "runner")
