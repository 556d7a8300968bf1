"""Start-up and shutdown of one edge process, in order."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from shared.auth import TokenService
from shared.auth.current import KnownUsers
from shared.db import UserStore, create_schema, make_engine, session_factory
from shared.db.batching import Batched
from shared.db.exports import ExportStore
from shared.db.runs import RunStore
from shared.db.notifications import NotificationStore
from shared.lifecycle import Lifecycle
from shared.messaging.broker import Publisher, connect, declare_history_stream
from shared.messaging.producer import Producer
from shared.service import run_until_signalled
from services.ws_edge.app import make_app
from services.ws_edge.admission import AdmissionLookup
from services.ws_edge.bindings import BindingTable
from services.ws_edge.command_gate import CommandGate
from services.ws_edge.consumer import EventConsumer
from services.ws_edge.deps import EdgeDeps, ExportsDeps, PublishDeps
from services.ws_edge.errors import CloseCode
from services.ws_edge.gap import GapReplay
from services.ws_edge.history import HistoryReader
from services.ws_edge.hub import Hub, TextFramer
from services.ws_edge.keepalive import Keepalive
from services.ws_edge.login_limits import LoginLimiter
from services.ws_edge.metrics import EdgeMetrics
from services.ws_edge.settings import EdgeSettings
from services.ws_edge.shedding import OVERLOADED, UpgradeShedder

log = logging.getLogger(__name__)


class EdgeServer:
    """Owns the edge's resources. ``start`` builds them in order and registers each with
    the lifecycle (shared/lifecycle.py), ``stop`` closes them in reverse."""

    def __init__(self, settings: EdgeSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = EdgeMetrics(registry or CollectorRegistry())
        self.hub = Hub()
        self.keepalive = Keepalive(settings.ping_interval_s, settings.ping_timeout_s)
        self.port = 0
        self._lifecycle = Lifecycle("edge", deadline_s=settings.shutdown_deadline_s)
        self.consumer: EventConsumer | None = None
        self.deps: EdgeDeps | None = None
        self.connection: AbstractRobustConnection | None = None
        self._rebinding: asyncio.Future[None] | None = None  # after a new broker connection
        self._reconnects = 0  # a rebind that a newer one follows leaves the replay to it
        self._gap: GapReplay | None = None

    def is_ready(self) -> bool:
        """Consuming, and every held key bound (not while they are bound again after a
        new broker connection)."""
        return (
            not self._lifecycle.closing
            and self.consumer is not None
            and self.consumer.is_ready()
            and (self._rebinding is None or self._rebinding.done())
        )

    async def rebound(self) -> None:
        """Return once the keys held when the broker connection was last replaced are
        bound again (at once if it never was)."""
        if self._rebinding is not None:
            await asyncio.shield(self._rebinding)

    async def start(self) -> None:
        """Threads, database, broker, consumer, then the listener; a failure closes what
        was started. ``stop`` closes them in the reverse order."""
        async with self._lifecycle.starting() as life:
            await self._start(life)

    async def _start(self, life: Lifecycle) -> None:
        settings = self.settings
        executor = ThreadPoolExecutor(settings.login_threads, thread_name_prefix="edge-blocking")
        life.callback(executor.shutdown, wait=False, cancel_futures=True)
        engine = make_engine(settings.common.database_url)
        life.callback(engine.dispose)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, create_schema, engine)
        sessions = session_factory(engine)
        users = UserStore(sessions)
        notifications = NotificationStore(sessions)
        exports = ExportsDeps(
            store=ExportStore(sessions), notifications=notifications,
            pending=Batched(notifications.pending, (), executor),
            directory=settings.exports_dir, limits=settings.export_limits,
        )

        self.connection = connection = await connect(
            settings.common.amqp_url, name=f"warren-{settings.common.instance_id}",
            outage_alert_s=settings.common.broker_outage_alert_s,
        )
        life.push_async_callback(connection.close)
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_reconnect)
        history = settings.common.history
        publisher = await Publisher.open(connection, history)
        if history.enabled:
            await declare_history_stream(connection, history)
        framer = TextFramer()
        reader = HistoryReader(
            connection, await Producer.open(connection), history, self.metrics, framer
        )
        life.push_async_callback(reader.close)
        self.consumer = consumer = EventConsumer(
            connection, self.hub, self.metrics, settings.common.instance_id, settings.prefetch,
            settings.bind_channels,
        )
        bindings = BindingTable(consumer, on_change=lambda n: self.metrics.bindings.set(n + 1))
        life.push_async_callback(consumer.stop)
        await consumer.start()
        self._gap = gap = GapReplay(
            self.hub, reader, self.metrics, delivered=lambda: consumer.delivered_ts,
            connected=connection.connected.is_set,
        )
        life.push_async_callback(gap.close)
        commands = await CommandGate.open(connection, settings, self.metrics.registry)
        life.push_async_callback(commands.close)

        self.deps = EdgeDeps(
            settings=settings,
            tokens=TokenService(settings.auth),
            users=users,
            known_users=KnownUsers(users, executor) if settings.check_users else None,
            admission=AdmissionLookup(engine, executor, check_users=settings.check_users),
            publisher=publisher,
            hub=self.hub,
            bindings=bindings,
            framer=framer,
            metrics=self.metrics,
            blocking=executor,
            is_ready=self.is_ready,
            login_limiter=LoginLimiter(settings.login_limits),
            commands=commands,
            publishing=PublishDeps.build(settings.publish, sessions, executor),
            history=reader,
            keepalive=self.keepalive,
            exports=exports,
            runs=RunStore(sessions),
        )
        # A reconnect storm queues thousands of connects at once: Tornado's default
        # backlog (128) drops their SYNs, and /readyz waits in the same accept queue.
        sockets = bind_sockets(
            settings.port, settings.host, reuse_port=False, backlog=settings.listen_backlog
        )
        self.port = sockets[0].getsockname()[1]
        app = UpgradeShedder(
            make_app(self.deps),
            overloaded=lambda: self.hub.opening >= settings.max_opening,
            refused=self.metrics.handshakes_refused.labels(OVERLOADED).inc,
        )
        http = HTTPServer(
            app,
            idle_connection_timeout=settings.handshake_timeout_s,
            body_timeout=settings.handshake_timeout_s,
            max_body_size=1 << 20,
            # No xheaders: Tornado would believe X-Forwarded-For from any client. The
            # application reads it from trusted proxies only (client_address.py).
        )
        # Closed in reverse: stop accepting, stop pinging, close the WebSockets with
        # 1001 and wait for them (the drain), then drop the HTTP connections left.
        life.push_async_callback(http.close_all_connections)
        life.push_async_callback(self._close_sockets, bounded=False)
        self.keepalive.start()
        life.callback(self.keepalive.stop)
        http.add_sockets(sockets)
        life.callback(http.stop)
        log.info(
            "edge ready",
            extra={"port": self.port, "instance": settings.common.instance_id,
                   "queue": consumer.queue_name},
        )

    def _on_lost(self, *_args: object) -> None:
        """The broker connection broke (or a reconnection failed): the events routed
        until every key is bound again will not reach this edge's queue. Each open
        socket holds its live events back from now on, for the replay (gap.py)."""
        connection = self.connection
        if connection is None or connection.close_called or self._lifecycle.closing:
            return  # closed on purpose
        if self._gap is None:
            return
        self._gap.hold()

    def _on_reconnect(self, *_args: object) -> None:
        log.info("broker connection restored")
        if self.deps is not None and self._gap is not None:
            # Sockets welcomed during the outage missed events too.
            self._gap.hold()
            self._reconnects += 1
            # The new exclusive queue holds only `broadcast`: not ready until it holds
            # every key a socket here needs.
            self._rebinding = asyncio.ensure_future(
                self._rebind(self.deps.bindings, self._gap, self._reconnects)
            )

    async def _rebind(self, bindings: BindingTable, gap: GapReplay, reconnect: int) -> None:
        outcomes = await bindings.rebind()
        failed = sum(1 for outcome in outcomes if outcome is not None)
        log.info("bindings restored", extra={"keys": len(outcomes) - failed, "failed": failed})
        if reconnect != self._reconnects or self.consumer is None or not self.consumer.is_ready():
            return  # the connection broke again: the next rebind replays
        # Every event routed from now on reaches the queue: replay what came before.
        gap.replay(bindings.unbound)

    async def _close_sockets(self) -> None:
        """Close every WebSocket with 1001 and wait for them, up to the shutdown deadline."""
        self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
        try:
            await asyncio.wait_for(self.hub.wait_empty(), self.settings.shutdown_deadline_s)
        except asyncio.TimeoutError:
            log.warning("shutdown deadline passed with sockets open", extra={"open": len(self.hub)})

    async def stop(self) -> None:
        """Stop accepting, close sockets with 1001, then close broker, database, threads.

        The broker may be away: its steps together take at most the shutdown deadline.
        """
        if await self._lifecycle.aclose():  # else stopping already, and now stopped
            log.info("edge stopped")


async def serve(settings: EdgeSettings) -> None:
    """Run an edge until SIGTERM or SIGINT."""
    await run_until_signalled(EdgeServer(settings), "edge")
