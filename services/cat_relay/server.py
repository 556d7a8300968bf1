"""Start-up and shutdown of one relay process, in order."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from tornado.httpserver import HTTPServer

from shared.auth import TokenService
from shared.db import ChatHistory, UserStore, create_schema, make_engine, session_factory
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command
from shared.messaging.work import WorkConsumer
from shared.service import listen, run_until_signalled
from services.cat_relay.app import make_app
from services.cat_relay.asker import Asker
from services.cat_relay.cat import CatClient, make_client
from services.cat_relay.dispatch import Dispatcher
from services.cat_relay.metrics import RelayMetrics
from services.cat_relay.relay import Relay
from services.cat_relay.sessions import SessionTable
from services.cat_relay.settings import RelaySettings

log = logging.getLogger(__name__)


class RelayServer:
    """Owns the relay's resources. ``start`` builds them in order, ``stop`` undoes it."""

    def __init__(self, settings: RelaySettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = RelayMetrics(registry or CollectorRegistry())
        self.port = 0
        self.connection: AbstractRobustConnection | None = None
        self.cat: CatClient | None = None
        self.sessions: SessionTable | None = None
        self._asker: Asker | None = None
        self._consumer: WorkConsumer | None = None
        self._http: HTTPServer | None = None
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._draining = False
        self._stopped = False

    def is_ready(self) -> bool:
        return (
            not self._draining
            and self._consumer is not None
            and self._consumer.is_ready()
            and self.sessions is not None
            and self.sessions.is_ready()
        )

    async def start(self) -> None:
        settings = self.settings
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="relay-blocking")
        self._engine = make_engine(settings.common.database_url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, create_schema, self._engine)
        sessions_db = session_factory(self._engine)
        history = ChatHistory(sessions_db, settings.history_turns)

        self.cat = cat = make_client(settings.cat, self._executor)
        self.metrics.watch_cat_sockets(lambda: cat.open_sockets)
        self.connection = connection = await connect(
            settings.common.amqp_url, name=f"warren-{settings.common.instance_id}",
            outage_alert_s=settings.common.broker_outage_alert_s,
        )
        publisher = await Publisher.open(connection)
        relay = Relay(settings, cat, history, publisher, self.metrics, self._executor)
        self.sessions = sessions = SessionTable(
            connection,
            relay,
            cat,
            idle_s=settings.session_idle_s,
            local_limit=max(1, settings.prefetch // 2),
            on_count=self.metrics.sessions.set,
        )
        await sessions.start()
        self._asker = asker = Asker(connection, publisher, settings.common.instance_id)
        await asker.start()
        dispatcher = Dispatcher(sessions, self.metrics)
        # No retry policy: an ask that failed may have reached the Cat already (the v2
        # history is written after the answer), so it goes back to the queue and is
        # answered ``interrupted`` rather than asked again (docs/cat_relay.md, Failures).
        self._consumer = WorkConsumer(
            connection, Command.CHAT_ASK, dispatcher.take, prefetch=settings.prefetch
        )
        await self._consumer.start()
        tokens = TokenService(settings.auth)
        app = make_app(
            settings, asker, cat, tokens, UserStore(sessions_db), self._executor, self.metrics,
            self.is_ready,
        )
        self._http, self.port = listen(app, settings.http)
        log.info(
            "cat_relay ready",
            extra={"port": self.port, "instance": settings.common.instance_id,
                   "cat": settings.cat.url, "protocol": settings.cat.protocol.value},
        )

    async def stop(self) -> None:
        """Stop taking asks, answer those taken, hand sessions to other replicas, close."""
        if self._stopped:
            return
        self._stopped = True
        self._draining = True
        deadline = self.settings.http.shutdown_deadline_s
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        if self._http is not None:
            self._http.stop()
        try:
            async with asyncio.timeout(deadline):
                if self._consumer is not None:
                    await self._consumer.stop_consuming()
                if self.sessions is not None:
                    await self.sessions.stop_taking()
        except (TimeoutError, AMQPError, ConnectionError):
            log.warning("could not stop consuming cleanly", exc_info=True)
        drained = True
        if self._consumer is not None:
            drained = await self._consumer.drain(max(0.0, until - loop.time())) and drained
        if self.sessions is not None:
            drained = await self.sessions.wait_released(max(0.0, until - loop.time())) and drained
        if self._asker is not None:
            drained = await self._asker.wait_answered(max(0.0, until - loop.time())) and drained
        if not drained:
            log.warning("asks still running at the shutdown deadline: answered interrupted")
        try:
            async with asyncio.timeout(deadline):
                if self.sessions is not None:
                    await self.sessions.interrupt()
        except TimeoutError:
            log.warning("could not answer every ask left before the deadline")
        if self._asker is not None:
            self._asker.abandon()
        try:
            async with asyncio.timeout(deadline):
                if self._consumer is not None:
                    await self._consumer.close()
                if self._http is not None:
                    await self._http.close_all_connections()
                if self.sessions is not None:
                    await self.sessions.close()
                if self.cat is not None:
                    await self.cat.close()
                if self.connection is not None:
                    await self.connection.close()
        except TimeoutError:
            log.warning("broker connection did not close before the deadline")
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._engine is not None:
            self._engine.dispose()
        log.info("cat_relay stopped")


async def serve(settings: RelaySettings) -> None:
    """Run a relay until SIGTERM or SIGINT."""
    await run_until_signalled(RelayServer(settings), "cat_relay")
