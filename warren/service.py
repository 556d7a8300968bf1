"""Your own service: command handlers that Warren's edge routes to, in a few lines
(docs/extending.md, "Your own services")::

    from warren.service import CommandContext, CommandError, Service

    service = Service("orders")

    @service.command("orders.create", description="Create an order")
    async def create(ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any] | None:
        if data.get("qty", 0) <= 0:
            raise CommandError("invalid_qty", "qty must be positive")
        return {"order_id": 42}

Run it with ``warren serve pkg.module:service`` (or ``python -m warren.service
pkg.module:service``). The runtime is the one Warren's own services use: each command
type's work queue is consumed through ``shared.messaging.work.WorkConsumer`` (its
retries and dead letters), the types are declared in the catalogue by an ``Advertiser``
once consumed, and ``shared.lifecycle.Lifecycle`` closes everything in reverse on
SIGTERM. The outcome of a handler:

- it returns a dict: ``<type>.done`` ``{**result, "command_id"}`` goes to the sender;
  None: nothing is published;
- it raises :class:`CommandError`: ``<type>.failed`` ``{"command_id", "code",
  "message"}`` goes to the sender, and the command is not retried;
- it raises anything else: logged with the command's correlation id and retried as
  ``WorkConsumer`` says; when its last delivery fails too, the sender gets
  ``<type>.failed`` with code ``internal`` and the command is dead-lettered.

A command is handled at least once. Once its outcome has been published, the command id
is recorded in Warren's database (``shared.db.commands``) and a redelivery of it runs
nothing and publishes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import import_module
from typing import Any, Final, TypeVar

import tornado.web
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.catalogue import CommandType, Offer, advertise
from shared.config import CommonSettings, ConfigError, Env
from shared.db import create_schema, make_engine, session_factory
from shared.db.commands import CommandStore
from shared.db.models import utcnow
from shared.db.outage import RetryWhileUnavailable
from shared.lifecycle import Lifecycle
from shared.logging import configure_logging
from shared.messaging.broker import Publisher, connect
from shared.messaging.envelope import Envelope
from shared.messaging.names import (
    MAX_TYPE_LENGTH,
    Address,
    AddressError,
    check_name,
    check_type,
    parse_destination,
)
from shared.messaging.work import WorkConsumer
from shared.service import HttpSettings, listen, run_service, run_until_signalled
from shared.web import HealthHandler, MetricsHandler, ReadyHandler, log_request

__all__ = [
    "CommandContext", "CommandError", "Handler", "Service", "ServiceRuntime",
    "ServiceSettings", "load", "serve",
]

log = logging.getLogger(__name__)

PREFIX: Final = "SERVICE"
DEFAULT_PORT: Final = 8400
#: Commands of one type a replica handles at once; more replicas for more throughput.
PREFETCH: Final = 8
DB_THREADS: Final = 2
DONE_SUFFIX: Final = ".done"
FAILED_SUFFIX: Final = ".failed"
INTERNAL: Final = "internal"
#: A duplicate arrives within seconds of the original; the records of handled commands
#: are kept much longer than that, then deleted.
RETENTION: Final = timedelta(days=7)
SWEEP_INTERVAL_S: Final = 3600.0

Result = dict[str, Any] | None
Handler = Callable[["CommandContext", dict[str, Any]], Awaitable[Result]]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")


class CommandError(Exception):
    """The command cannot succeed: the sender gets ``<type>.failed`` with ``code`` and
    ``message``, and the command is not retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a handler knows about the command it handles.

    ``sender`` is the user id the edge verified; ``command_id`` the command's envelope
    id (the same on every redelivery: key your own writes by it to make them
    idempotent); ``log`` writes records that carry the command's correlation id.
    """

    sender: str
    command_id: str
    type: str
    service: str
    log: logging.Logger
    _publisher: Publisher = field(repr=False)

    async def publish(
        self, type: str, data: Mapping[str, Any], to: str | None = None
    ) -> None:
        """Publish the event ``type`` to ``to`` (``user:<id>``, ``group:<name>`` or
        ``broadcast``; the sender when None), from ``service:<name>``, confirmed by the
        broker before this returns."""
        destination = Address.user(self.sender) if to is None else parse_destination(to)
        await self._publisher.publish_event(Envelope(
            type=type, to=destination, sender=Address.service(self.service), data=dict(data),
        ))


@dataclass(frozen=True, slots=True)
class Declared:
    """One command type a service handles."""

    type: str
    handler: Handler
    roles: frozenset[str] | None
    description: str


class Service:
    """A named set of command handlers; ``name`` follows the rules of a name in
    docs/protocol.md (1.1): it names the service in the catalogue, its events' ``from``
    (``service:<name>``), its logs and its metrics."""

    def __init__(self, name: str) -> None:
        self.name = check_name(name, "service name")
        self._commands: dict[str, Declared] = {}

    @property
    def commands(self) -> tuple[Declared, ...]:
        return tuple(self._commands.values())

    def command(
        self, type: str, *, roles: Sequence[str] | None = None, description: str = ""
    ) -> Callable[[H], H]:
        """Handle the command ``type``: declared in the catalogue, sent by anyone signed in
        (``roles`` None) or only by users with one of ``roles``."""
        check_type(type)
        if len(type) + len(FAILED_SUFFIX) > MAX_TYPE_LENGTH:
            raise AddressError(
                f"command type {type!r} is too long: {type}{FAILED_SUFFIX} must be at most "
                f"{MAX_TYPE_LENGTH} characters"
            )
        if type in self._commands:
            raise ValueError(f"{self.name} handles {type!r} twice")
        chosen = None if roles is None else frozenset(roles)
        CommandType(type, chosen, description)  # refuses bad roles now, not at start

        def register(handler: H) -> H:
            self._commands[type] = Declared(type, handler, chosen, description)
            return handler

        return register

    def offer(self) -> Offer:
        return Offer(commands=tuple(
            CommandType(c.type, c.roles, c.description) for c in self._commands.values()
        ))


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """A user service process's settings: the common ones, and where it serves
    ``/healthz``, ``/readyz`` and ``/metrics`` (``WARREN_SERVICE_HOST``, ``_PORT``,
    ``_SHUTDOWN_DEADLINE_S``)."""

    common: CommonSettings
    http: HttpSettings

    @classmethod
    def from_env(cls, env: Env, service: str) -> ServiceSettings:
        return cls(
            common=CommonSettings.from_env(env, service),
            http=HttpSettings.from_env(env, PREFIX, DEFAULT_PORT),
        )


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.handled = Counter(
            "warren_service_commands_total",
            "Commands handled, by outcome: done, failed (CommandError), error (raised, "
            "retried), given_up (dead-lettered), duplicate (handled before)",
            ["service", "type", "outcome"], registry=registry,
        )
        self.latency = Histogram(
            "warren_service_handler_seconds", "Time in a command handler",
            ["service", "type"], registry=registry,
        )


class ServiceRuntime:
    """Runs one :class:`Service`: ``start`` builds its resources in order and registers
    each with the lifecycle, ``stop`` closes them in reverse."""

    def __init__(
        self, service: Service, settings: ServiceSettings,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not service.commands:
            raise ConfigError(f"service {service.name} handles no command")
        self.service = service
        self.settings = settings
        self.metrics = ServiceMetrics(registry or CollectorRegistry())
        self.port = 0
        self._lifecycle = Lifecycle(service.name, deadline_s=settings.http.shutdown_deadline_s)
        self._consumers: list[WorkConsumer] = []
        self._advertised = False
        self._executor: ThreadPoolExecutor | None = None
        self._store: CommandStore | None = None
        self._publisher: Publisher | None = None
        # command id -> the lock its deliveries here take in turn, and how many want it
        self._running: dict[str, tuple[asyncio.Lock, int]] = {}
        self._logger = logging.getLogger(service.name)

    def is_ready(self) -> bool:
        return (not self._lifecycle.closing and self._advertised
                and all(consumer.is_ready() for consumer in self._consumers))

    async def start(self) -> None:
        """Database, broker, consumers, catalogue, then the listener; a failure closes
        what was started. ``stop`` closes them in the reverse order."""
        async with self._lifecycle.starting() as life:
            await self._start(life)

    async def _start(self, life: Lifecycle) -> None:
        settings, loop = self.settings, asyncio.get_running_loop()
        self._executor = executor = ThreadPoolExecutor(
            DB_THREADS, thread_name_prefix=f"{self.service.name}-db"
        )
        life.callback(executor.shutdown, wait=False, cancel_futures=True)
        engine = make_engine(settings.common.database_url)
        life.callback(engine.dispose)
        await loop.run_in_executor(executor, create_schema, engine)
        self._store = CommandStore(session_factory(engine))

        connection = await connect(
            settings.common.amqp_url, name=f"warren-{settings.common.instance_id}",
            outage_alert_s=settings.common.broker_outage_alert_s,
        )
        life.push_async_callback(connection.close)
        self._publisher = await Publisher.open(connection, settings.common.history)
        for declared in self.service.commands:
            await self._consume(life, connection, declared)
        # Offered once consumed. Withdrawn after the drain, as Warren's own services do:
        # stopping takes no new commands at once, and the work queues keep what arrives
        # meanwhile for the other replicas.
        advertiser = await advertise(
            connection, settings.common, self.service.name, self.service.offer()
        )
        life.push_async_callback(advertiser.stop)
        self._advertised = True
        life.push_async_callback(self._drain, bounded=False)
        life.create_task(self._sweep_forever(), name="handled commands sweep")

        app = tornado.web.Application([
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"is_ready": self.is_ready}),
            (r"/metrics", MetricsHandler, {"registry": self.metrics.registry}),
        ], log_function=log_request)
        http, self.port = listen(app, settings.http)
        life.push_async_callback(http.close_all_connections)
        life.callback(http.stop)
        log.info("service ready", extra={
            "service": self.service.name, "port": self.port,
            "instance": settings.common.instance_id,
            "commands": [c.type for c in self.service.commands],
        })

    async def _consume(
        self, life: Lifecycle, connection: AbstractRobustConnection, declared: Declared
    ) -> None:
        async def handle(envelope: Envelope, _message: AbstractIncomingMessage) -> None:
            await self._handle(declared, envelope)

        async def given_up(envelope: Envelope, _exc: Exception) -> None:
            self.metrics.handled.labels(self.service.name, declared.type, "given_up").inc()
            await self._publish_failed(declared.type, envelope, INTERNAL,
                                       "the command failed; it was not completed")

        consumer = WorkConsumer(
            connection, declared.type, handle, prefetch=PREFETCH,
            retry=RetryWhileUnavailable(),  # the database away: waited for, in place
            on_given_up=given_up,
        )
        life.push_async_callback(consumer.close)
        await consumer.start()
        self._consumers.append(consumer)

    async def _handle(self, declared: Declared, envelope: Envelope) -> None:
        name, kind = self.service.name, declared.type
        # Two deliveries of one command id in this process run one after the other, so
        # that the second finds the first's record.
        async with self._one_at_a_time(envelope.id):
            if not await self._blocking(self._store_of().claim, name, envelope.id):
                self.metrics.handled.labels(name, kind, "duplicate").inc()
                log.info("command handled before; not run again",
                         extra={"command": kind, "id": envelope.id})
                return
            await self._run(declared, envelope)
            await self._blocking(self._store_of().complete, name, envelope.id)

    async def _run(self, declared: Declared, envelope: Envelope) -> None:
        name, kind = self.service.name, declared.type
        context = CommandContext(
            sender=envelope.sender.name, command_id=envelope.id, type=kind, service=name,
            log=self._logger, _publisher=self._publisher_of(),
        )
        started = time.perf_counter()
        try:
            result = await declared.handler(context, envelope.data)
        except CommandError as exc:
            self.metrics.handled.labels(name, kind, "failed").inc()
            await self._publish_failed(kind, envelope, exc.code, exc.message)
            return
        except Exception:
            self.metrics.handled.labels(name, kind, "error").inc()
            raise
        finally:
            self.metrics.latency.labels(name, kind).observe(time.perf_counter() - started)
        if result is not None and not isinstance(result, dict):
            self.metrics.handled.labels(name, kind, "error").inc()
            raise TypeError(
                f"the handler of {kind} returned {type(result).__name__}, not a dict or None"
            )
        self.metrics.handled.labels(name, kind, "done").inc()
        if result is not None:
            await self._publisher_of().publish_event(Envelope(
                type=kind + DONE_SUFFIX, to=envelope.sender, sender=Address.service(name),
                data={**result, "command_id": envelope.id},
            ))

    async def _publish_failed(
        self, kind: str, envelope: Envelope, code: str, message: str
    ) -> None:
        await self._publisher_of().publish_event(Envelope(
            type=kind + FAILED_SUFFIX, to=envelope.sender,
            sender=Address.service(self.service.name),
            data={"command_id": envelope.id, "code": code, "message": message},
        ))

    @asynccontextmanager
    async def _one_at_a_time(self, command_id: str) -> AsyncIterator[None]:
        lock, users = self._running.get(command_id, (asyncio.Lock(), 0))
        self._running[command_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._running[command_id]
            if users == 1:
                del self._running[command_id]
            else:
                self._running[command_id] = (lock, users - 1)

    async def _drain(self) -> None:
        """Stop taking commands and let those in hand finish within the shutdown
        deadline; past it, they are left unacknowledged for another replica."""
        deadline = self.settings.http.shutdown_deadline_s
        for consumer in self._consumers:
            try:
                async with asyncio.timeout(deadline):
                    await consumer.stop_consuming()
            except Exception:
                log.warning("could not cancel a consumer cleanly", exc_info=True)
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        for consumer in self._consumers:
            if not await consumer.drain(max(0.0, until - loop.time())):
                log.warning("shutdown deadline passed with commands in hand; leaving them "
                            "unacknowledged", extra={"in_flight": consumer.in_flight})

    async def _sweep_forever(self) -> None:
        while True:  # until closing cancels it
            try:
                forgotten = await self._blocking(
                    self._store_of().forget, utcnow() - RETENTION
                )
                if forgotten:
                    log.info("old records of handled commands deleted",
                             extra={"count": forgotten})
            except Exception:
                log.warning("sweep of handled commands failed; retrying next interval",
                            exc_info=True)
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def _blocking(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def _store_of(self) -> CommandStore:
        assert self._store is not None, "not started"
        return self._store

    def _publisher_of(self) -> Publisher:
        assert self._publisher is not None, "not started"
        return self._publisher

    async def stop(self) -> None:
        """Stop consuming, drain the handlers in hand within the shutdown deadline,
        withdraw from the catalogue, then close broker, database and threads."""
        if await self._lifecycle.aclose():  # else stopping already, and now stopped
            log.info("service stopped", extra={"service": self.service.name})


class LoadError(ValueError):
    """A ``pkg.module:attribute`` that does not name a :class:`Service`."""


def load(reference: str) -> Service:
    """The :class:`Service` that ``pkg.module:attribute`` names."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise LoadError(f"{reference!r} is not of the form pkg.module:service")
    try:
        module = import_module(module_name)
    except Exception as exc:
        raise LoadError(f"cannot import {module_name!r} ({reference}): {exc!r}") from exc
    found = getattr(module, attribute, None)
    if not isinstance(found, Service):
        raise LoadError(f"{reference} is {type(found).__name__}, not a warren.service.Service")
    return found


async def serve(service: Service, settings: ServiceSettings) -> None:
    """Run ``service`` until SIGTERM or SIGINT."""
    await run_until_signalled(ServiceRuntime(service, settings), service.name)


def run(reference: str, env: Env) -> None:
    """``warren serve pkg.module:service``: load it, read its settings, run it."""
    service = load(reference)
    settings = ServiceSettings.from_env(env, service.name)
    configure_logging(service.name, settings.common.log_level)
    run_service(serve(service, settings), on_uvloop=False)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m warren.service pkg.module:service``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: python -m warren.service pkg.module:service", file=sys.stderr)
        raise SystemExit(2)
    try:
        run(args[0], os.environ)
    except (ConfigError, ValueError) as exc:
        print(f"warren serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    # Through the importable module, so that the user's ``from warren.service import
    # Service`` and this runtime share one ``Service`` class.
    from warren.service import main as _main

    _main()
