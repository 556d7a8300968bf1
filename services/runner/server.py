"""Start-up and shutdown of one runner replica, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from shared.catalogue import CommandType, Offer, advertise
from shared.db import create_schema, make_engine, session_factory
from shared.db.outage import RetryWhileUnavailable
from shared.db.runs import RunStore
from shared.db.users import UserStore
from shared.lifecycle import Lifecycle
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command
from shared.messaging.work import WorkConsumer
from shared.service import listen, run_until_signalled
from services.runner.app import make_app
from services.runner.control import ControlLink
from services.runner.dispatch import RunQueue, declare_runs_queue
from services.runner.manager import RunManager
from services.runner.metrics import RunnerMetrics
from services.runner.registry import JobRegistry, discover_jobs
from services.runner.settings import RunnerSettings
from services.runner.stopping import StopService

log = logging.getLogger(__name__)


class RunnerServer:
    """Owns the replica's resources. ``start`` builds them in order and registers each
    with the lifecycle (shared/lifecycle.py), ``stop`` closes them in reverse."""

    def __init__(self, settings: RunnerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = RunnerMetrics(registry or CollectorRegistry())
        self.port = 0
        self.manager: RunManager | None = None
        self.jobs: JobRegistry | None = None  # found at start; what this replica offers
        self._lifecycle = Lifecycle("runner", deadline_s=settings.http.shutdown_deadline_s)
        self.connection: AbstractRobustConnection | None = None
        self._control: ControlLink | None = None
        self._starts: WorkConsumer | None = None
        self._runs: WorkConsumer | None = None
        self._stops: WorkConsumer | None = None

    @property
    def replica(self) -> str:
        return self.settings.common.instance_id

    def is_ready(self) -> bool:
        parts = (self._control, self._starts, self._runs, self._stops)
        return not self._lifecycle.closing and all(p is not None and p.is_ready() for p in parts)

    async def start(self) -> None:
        """Threads, database, broker, control queue, heartbeat, probes, then the
        consumers; a failure closes what was started. ``stop`` closes them in reverse."""
        async with self._lifecycle.starting() as life:
            await self._start(life)

    async def _start(self, life: Lifecycle) -> None:
        settings = self.settings
        # First: a replica with a broken job package refuses to start before it consumes.
        self.jobs = jobs = discover_jobs(settings.job_references, settings.jobs_enabled)
        executor = ThreadPoolExecutor(settings.db_threads, thread_name_prefix="runner-db")
        life.callback(executor.shutdown, wait=False, cancel_futures=True)
        engine = make_engine(settings.common.database_url)
        life.callback(engine.dispose)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, create_schema, engine)
        sessions = session_factory(engine)

        self.connection = connection = await connect(
            settings.common.amqp_url, name=f"warren-{self.replica}",
            outage_alert_s=settings.common.broker_outage_alert_s,
        )
        life.push_async_callback(connection.close)
        publisher = await Publisher.open(connection, settings.common.history)
        queue = RunQueue(connection)
        life.push_async_callback(queue.close)
        await queue.start()
        self.manager = manager = RunManager(
            settings, jobs, RunStore(sessions), UserStore(sessions), publisher, queue,
            self.metrics, executor,
        )
        stops = StopService(manager)
        self._control = stops.control = ControlLink(connection, self.replica, stops.handle_control)
        life.push_async_callback(self._control.close)
        await self._control.start()
        manager.owner_alive = stops.owner_alive
        await manager.fail_own_stale_runs()
        life.create_task(self._beat(), name="runner heartbeat")

        app = make_app(self.metrics.registry, self.is_ready)
        http, self.port = listen(app, settings.http)
        life.callback(http.stop)  # after the drain: /readyz answers 503 all through it
        retry = RetryWhileUnavailable()  # a command that meets the database away waits for it
        self._stops = WorkConsumer(
            connection, Command.RUN_STOP, stops.handle_command, prefetch=settings.command_prefetch,
            retry=retry,
        )
        life.push_async_callback(_close_consumer, self._stops, name="run.stop consumer")
        await self._stops.start()
        # The runs queue's prefetch is this replica's number of slots.
        self._runs = WorkConsumer(
            connection, Command.RUN_START, manager.handle_run, prefetch=settings.max_concurrent,
            declare=declare_runs_queue, retry=retry,
        )
        life.push_async_callback(_close_consumer, self._runs, name="runs queue consumer")
        await self._runs.start()
        self._starts = WorkConsumer(
            connection, Command.RUN_START, manager.handle_start,
            prefetch=settings.command_prefetch, retry=retry,
        )
        life.push_async_callback(_close_consumer, self._starts, name="run.start consumer")
        await self._starts.start()
        # Offered once consumed. Withdrawn after the drain: stopping takes no new work at
        # once, and the work queue keeps what arrives meanwhile for the other replicas.
        advertiser = await advertise(connection, settings.common, "runner", Offer(
            commands=(CommandType(Command.RUN_START), CommandType(Command.RUN_STOP)),
            jobs=tuple(job.describe() for job in jobs.values()),
        ))
        life.push_async_callback(advertiser.stop)
        life.push_async_callback(self._drain, manager, bounded=False)
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

    async def _drain(self, manager: RunManager) -> None:
        """Take no new runs, and end the running ones within the shutdown deadline.

        ``run.stop`` is still consumed meanwhile: a user can stop a run that is draining.
        """
        manager.stop_accepting()
        deadline = self.settings.http.shutdown_deadline_s
        try:
            async with asyncio.timeout(deadline):
                for consumer in (self._starts, self._runs):
                    if consumer is not None:
                        await consumer.stop_consuming()
        except (TimeoutError, Exception):
            log.warning("could not cancel the start and run consumers", exc_info=True)
        await manager.shutdown(deadline)

    async def stop(self) -> None:
        """Take no new runs, end the running ones within the deadline, then close it all.

        The broker may be away: the closing steps together take at most the shutdown
        deadline, after the drain's own.
        """
        if await self._lifecycle.aclose():  # else stopping already, and now stopped
            log.info("runner stopped")


async def _close_consumer(consumer: WorkConsumer) -> None:
    """Stop consuming, let handlers still running finish briefly, close the channel."""
    with contextlib.suppress(Exception):
        await consumer.stop_consuming()
    await consumer.drain(2.0)
    await consumer.close()


async def serve(settings: RunnerSettings) -> None:
    """Run a replica until SIGTERM or SIGINT."""
    await run_until_signalled(RunnerServer(settings), "runner")
