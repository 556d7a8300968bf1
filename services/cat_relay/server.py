"""Start-up and shutdown of one relay process, in order."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError
from prometheus_client import CollectorRegistry
from tornado.httpserver import HTTPServer

from shared.auth import TokenService
from shared.auth.current import KnownUsers
from shared.catalogue import CommandType, Offer, advertise
from shared.db import ChatHistory, UserStore, create_schema, make_engine, session_factory
from shared.lifecycle import Lifecycle
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command
from shared.messaging.work import WorkConsumer
from shared.service import listen, run_until_signalled
from services.cat_relay.app import make_app
from services.cat_relay.asker import Asker
from services.cat_relay.cat import CatClient, make_client
from services.cat_relay.dispatch import Dispatcher
from services.cat_relay.metrics import RelayMetrics
from services.cat_relay.migrate import drain_classic_sessions
from services.cat_relay.relay import Relay
from services.cat_relay.sessions import SessionTable
from services.cat_relay.settings import RelaySettings

log = logging.getLogger(__name__)

# How long a starting relay waits for another to finish draining the classic chat queues
# (or for the earlier relays to stop) before it gives up.
CLASSIC_DRAIN_WAIT_S = 60.0


class RelayServer:
    """Owns the relay's resources. ``start`` builds them in order and registers each with
    the lifecycle (shared/lifecycle.py), ``stop`` closes them in reverse."""

    def __init__(self, settings: RelaySettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = RelayMetrics(registry or CollectorRegistry())
        self.port = 0
        self._lifecycle = Lifecycle("cat_relay", deadline_s=settings.http.shutdown_deadline_s)
        self.connection: AbstractRobustConnection | None = None
        self.cat: CatClient | None = None
        self.sessions: SessionTable | None = None
        self._consumer: WorkConsumer | None = None

    def is_ready(self) -> bool:
        return (
            not self._lifecycle.closing
            and self._consumer is not None
            and self._consumer.is_ready()
            and self.sessions is not None
            and self.sessions.is_ready()
        )

    async def start(self) -> None:
        """Threads, database, broker, Cat client, sessions, consumer, then the listener; a
        failure closes what was started. ``stop`` closes them in the reverse order."""
        async with self._lifecycle.starting() as life:
            await self._start(life)

    async def _start(self, life: Lifecycle) -> None:
        settings = self.settings
        executor = ThreadPoolExecutor(4, thread_name_prefix="relay-blocking")
        life.callback(executor.shutdown, wait=False, cancel_futures=True)
        engine = make_engine(settings.common.database_url)
        life.callback(engine.dispose)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, create_schema, engine)
        sessions_db = session_factory(engine)
        history = ChatHistory(sessions_db, settings.history_turns)

        self.connection = connection = await connect(
            settings.common.amqp_url, name=f"warren-{settings.common.instance_id}",
            outage_alert_s=settings.common.broker_outage_alert_s,
        )
        life.push_async_callback(connection.close)
        self.cat = cat = make_client(settings.cat, executor)
        life.push_async_callback(cat.close)
        self.metrics.watch_cat_sockets(lambda: cat.open_sockets)
        publisher = await Publisher.open(connection, settings.common.history)
        relay = Relay(settings, cat, history, publisher, self.metrics, executor)
        self.sessions = sessions = SessionTable(
            connection,
            relay,
            cat,
            idle_s=settings.session_idle_s,
            local_limit=max(1, settings.prefetch // 2),
            on_count=self.metrics.sessions.set,
        )
        life.push_async_callback(sessions.close)
        await sessions.start()
        # Before taking asks: those the earlier relays left in their classic session
        # queues come first (services/cat_relay/migrate.py).
        await drain_classic_sessions(connection, sessions.forward, wait_s=CLASSIC_DRAIN_WAIT_S)
        asker = Asker(connection, publisher, settings.common.instance_id)
        await asker.start()  # its channel closes with the connection
        dispatcher = Dispatcher(sessions, self.metrics)
        # No retry policy: an ask that failed may have reached the Cat already (the v2
        # history is written after the answer), so it goes back to the queue and is
        # answered ``interrupted`` rather than asked again (docs/cat_relay.md, Failures).
        self._consumer = consumer = WorkConsumer(
            connection, Command.CHAT_ASK, dispatcher.take, prefetch=settings.prefetch
        )
        life.push_async_callback(consumer.close)
        await consumer.start()
        # Offered once consumed. Withdrawn after the drain: stopping takes no new asks at
        # once, and the queue keeps what arrives meanwhile for the other replicas.
        advertiser = await advertise(connection, settings.common, "cat_relay", Offer(
            commands=(CommandType(Command.CHAT_ASK),),
        ))
        life.push_async_callback(advertiser.stop)
        tokens = TokenService(settings.auth)
        users = KnownUsers(UserStore(sessions_db), executor) if settings.check_users else None
        app = make_app(settings, asker, cat, tokens, users, self.metrics, self.is_ready)
        http, self.port = listen(app, settings.http)
        life.push_async_callback(http.close_all_connections)
        life.push_async_callback(self._drain, http, consumer, sessions, asker, bounded=False)
        log.info(
            "cat_relay ready",
            extra={"port": self.port, "instance": settings.common.instance_id,
                   "cat": settings.cat.url, "protocol": settings.cat.protocol.value},
        )

    async def _drain(
        self, http: HTTPServer, consumer: WorkConsumer, sessions: SessionTable, asker: Asker
    ) -> None:
        """Stop taking asks, answer those taken, hand sessions to other replicas; at the
        deadline answer what is left ``interrupted``."""
        deadline = self.settings.http.shutdown_deadline_s
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        http.stop()
        try:
            async with asyncio.timeout(deadline):
                await consumer.stop_consuming()
                await sessions.stop_taking()
        except (TimeoutError, AMQPError, ConnectionError):
            log.warning("could not stop consuming cleanly", exc_info=True)
        drained = await consumer.drain(max(0.0, until - loop.time()))
        drained = await sessions.wait_released(max(0.0, until - loop.time())) and drained
        drained = await asker.wait_answered(max(0.0, until - loop.time())) and drained
        if not drained:
            log.warning("asks still running at the shutdown deadline: answered interrupted")
        try:
            async with asyncio.timeout(deadline):
                await sessions.interrupt()
        except TimeoutError:
            log.warning("could not answer every ask left before the deadline")
        asker.abandon()

    async def stop(self) -> None:
        """Stop taking asks, answer those taken, hand sessions to other replicas, close.

        The broker may be away: the closing steps together take at most the shutdown
        deadline, after the drain's own.
        """
        if await self._lifecycle.aclose():  # else stopping already, and now stopped
            log.info("cat_relay stopped")


async def serve(settings: RelaySettings) -> None:
    """Run a relay until SIGTERM or SIGINT."""
    await run_until_signalled(RelayServer(settings), "cat_relay")
