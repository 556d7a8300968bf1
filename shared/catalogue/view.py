"""An edge's side of the catalogue: what the running services offer now, kept in memory.

The view hears every announcement and withdrawal on ``warren.catalogue`` through a queue
of its own, and keeps each instance's offer until the instance withdraws it or the time
to live of its last announcement runs out. When it opens (and after the broker
connection comes back) it asks every service to announce at once, so an edge that
starts next to running services knows them before it takes clients.

Whatever arrives is checked (shared/catalogue/model.py): a message that is not an
announcement or a withdrawal is dropped, an invalid entry is left out while the rest of
its announcement counts; each is counted in ``warren_catalogue_refused_total`` and logged
at WARNING once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.catalogue.advertiser import declare_catalogue_exchange
from shared.catalogue.model import (
    Announcement,
    CatalogueError,
    CommandType,
    Offer,
    Refusal,
    instance_of,
    parse_announcement,
)
from shared.messaging.envelope import Envelope, EnvelopeError, decode
from shared.messaging.names import (
    ADDRESS_BROADCAST,
    Address,
    CatalogueKey,
    catalogue_view_queue_name,
)
from shared.messaging.producer import BrokerUnavailable, MessageKind, Producer, Unroutable

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES: Final = 1 << 20
# After the first answer to a query, the view waits this long for the next before it
# takes the answers it has as all of them (bounded by the caller's wait).
QUERY_QUIET_S: Final = 0.1
MAX_LOGGED: Final = 1024  # refusals remembered so that each is logged once


@dataclass(slots=True)
class _Instance:
    service: str
    offer: Offer
    expires_at: float


@dataclass(frozen=True, slots=True)
class Listing:
    """What is offered now: command types (merged over the instances declaring each, with
    the services that do), and jobs and reports (each with its ``service``)."""

    commands: tuple[tuple[CommandType, tuple[str, ...]], ...]
    jobs: tuple[Mapping[str, Any], ...]
    reports: tuple[Mapping[str, Any], ...]


class CatalogueView:
    """The catalogue as one edge sees it. ``local`` is what the edge itself handles."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        service: str,
        local: Offer = Offer(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._local = local
        self._clock = clock
        self._instances: dict[str, _Instance] = {}
        self._index: dict[str, CommandType] = {}
        self._types: frozenset[str] = frozenset()
        self._fresh_until = -math.inf  # the index holds until an instance expires or changes
        self._logged: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._changed = asyncio.Event()
        self._heard = asyncio.Event()  # an announcement arrived (for a query's wait)
        self._prune: asyncio.TimerHandle | None = None
        self._producer: Producer | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._connection: AbstractRobustConnection | None = None
        self.refused = Counter(
            "warren_catalogue_refused_total",
            "Catalogue messages dropped (message) and announced entries left out (entry).",
            ["what"],
            registry=registry,
        )
        self.instances = Gauge(
            "warren_catalogue_instances",
            "Service instances whose offers the catalogue holds.",
            registry=registry,
        )

    # -- what is offered -------------------------------------------------------

    def command(self, kind: str) -> CommandType | None:
        """The declared command type ``kind`` (merged over its declarers), or None."""
        self._refresh()
        return self._index.get(kind)

    def types(self) -> frozenset[str]:
        """Every command type that may be sent now: declared, or the edge's own."""
        self._refresh()
        return self._types

    def listing(self) -> Listing:
        self._refresh()
        services: dict[str, set[str]] = {}
        jobs: dict[str, Mapping[str, Any]] = {}
        reports: dict[str, Mapping[str, Any]] = {}
        # Oldest first, so that of two instances offering the same name the newest wins.
        for instance in sorted(self._instances.values(), key=lambda i: i.expires_at):
            for command in instance.offer.commands:
                services.setdefault(command.type, set()).add(instance.service)
            for job in instance.offer.jobs:
                jobs[job["name"]] = {**job, "service": instance.service}
            for report in instance.offer.reports:
                reports[report["name"]] = {**report, "service": instance.service}
        for command in self._local.commands:
            services.setdefault(command.type, set()).add(self._service)
        return Listing(
            commands=tuple(
                (self._index[kind], tuple(sorted(services[kind]))) for kind in sorted(self._index)
            ),
            jobs=tuple(jobs[name] for name in sorted(jobs)),
            reports=tuple(reports[name] for name in sorted(reports)),
        )

    def job(self, name: str) -> Mapping[str, Any] | None:
        """The job ``name`` as the newest instance offering it describes it, or None."""
        return next((j for j in self.listing().jobs if j["name"] == name), None)

    def report(self, name: str) -> Mapping[str, Any] | None:
        """The report ``name`` as the newest instance offering it describes it, or None."""
        return next((r for r in self.listing().reports if r["name"] == name), None)

    async def wait_until(self, predicate: Callable[[CatalogueView], bool], timeout: float) -> None:
        """Return once ``predicate(view)`` holds; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    # -- what arrives ----------------------------------------------------------

    def receive(self, body: bytes) -> None:
        """Take one message from the catalogue exchange; never raises."""
        try:
            if len(body) > MAX_MESSAGE_BYTES:
                raise CatalogueError(f"message of {len(body)} bytes, more than {MAX_MESSAGE_BYTES}")
            envelope = decode(body)
            if envelope.type == CatalogueKey.ANNOUNCE:
                self._announced(parse_announcement(envelope))
            elif envelope.type == CatalogueKey.WITHDRAW:
                self._withdrawn(envelope)
            else:
                raise CatalogueError(f"unexpected message type {envelope.type!r}")
        except (EnvelopeError, CatalogueError) as exc:
            self.refused.labels("message").inc()
            self._warn_once(("message", str(exc)), "catalogue message dropped", reason=str(exc))

    def _announced(self, announcement: Announcement) -> None:
        for refusal in announcement.refused:
            self._refuse(announcement, refusal)
        now = self._clock()
        self._instances[announcement.instance] = _Instance(
            announcement.service, announcement.offer, now + announcement.ttl_s
        )
        self._heard.set()
        self._changed_now()

    def _withdrawn(self, envelope: Envelope) -> None:
        instance = instance_of(envelope)
        known = self._instances.get(instance)
        if known is not None and Address.service(known.service) == envelope.sender:
            del self._instances[instance]
            log.info("catalogue: instance withdrew", extra={"instance": instance,
                                                            "service": known.service})
            self._changed_now()

    def _refuse(self, announcement: Announcement, refusal: Refusal) -> None:
        self.refused.labels("entry").inc()
        self._warn_once(
            (announcement.instance, refusal.kind, refusal.name, refusal.reason),
            "catalogue entry refused", service=announcement.service,
            instance=announcement.instance, entry=f"{refusal.kind} {refusal.name}",
            reason=refusal.reason,
        )

    def _warn_once(self, key: tuple[str, ...], message: str, **extra: str) -> None:
        if key in self._logged:
            return
        self._logged[key] = None
        if len(self._logged) > MAX_LOGGED:
            self._logged.popitem(last=False)
        log.warning(message, extra=extra)

    def _changed_now(self) -> None:
        self._fresh_until = -math.inf
        self._changed.set()
        self._schedule_prune()

    def _refresh(self) -> None:
        now = self._clock()
        if now < self._fresh_until:
            return
        expired = [key for key, i in self._instances.items() if i.expires_at <= now]
        for key in expired:
            log.info("catalogue: instance expired", extra={
                "instance": key, "service": self._instances[key].service})
            del self._instances[key]
        declared: dict[str, list[CommandType]] = {}
        for command in self._local.commands:
            declared.setdefault(command.type, []).append(command)
        for instance in self._instances.values():
            for command in instance.offer.commands:
                declared.setdefault(command.type, []).append(command)
        self._index = {kind: _merge(kind, found) for kind, found in declared.items()}
        self._types = frozenset(self._index)
        self._fresh_until = min((i.expires_at for i in self._instances.values()), default=math.inf)
        self.instances.set(len(self._instances))
        if expired:
            self._changed.set()

    def _schedule_prune(self) -> None:
        """Wake waiters when the next instance expires (lookups expire it by themselves)."""
        if self._connection is None:
            return
        if self._prune is not None:
            self._prune.cancel()
        self._refresh()
        if math.isfinite(self._fresh_until):
            delay = max(0.0, self._fresh_until - self._clock())
            self._prune = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._prune = None
        self._refresh()
        self._schedule_prune()

    # -- the broker ------------------------------------------------------------

    async def open(
        self, connection: AbstractRobustConnection, instance_id: str, *, wait_s: float
    ) -> None:
        """Listen, then ask every service to announce, waiting up to ``wait_s`` for them."""
        self._connection = connection
        self._producer = producer = await Producer.open(connection)
        self._exchange = exchange = await declare_catalogue_exchange(producer)
        self._queue = queue = await producer.channel.declare_queue(
            catalogue_view_queue_name(instance_id), exclusive=True, auto_delete=True
        )
        for key in (CatalogueKey.ANNOUNCE, CatalogueKey.WITHDRAW):
            await queue.bind(exchange, routing_key=key.value)
        await queue.consume(self._on_message)
        connection.reconnect_callbacks.add(self._on_reconnect)
        await self._query(wait_s)

    async def close(self) -> None:
        if self._prune is not None:
            self._prune.cancel()
            self._prune = None
        if self._connection is not None:
            self._connection.reconnect_callbacks.discard(self._on_reconnect)
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.channel.close()
            except aio_pika.exceptions.AMQPError:
                pass  # the connection is going away with it

    def _on_reconnect(self, *_args: object) -> None:
        # Announcements made during the outage are lost: ask for them again.
        asyncio.ensure_future(self._query(0.0))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            self.receive(message.body)

    async def _query(self, wait_s: float) -> None:
        producer, exchange, queue = self._producer, self._exchange, self._queue
        if producer is None or exchange is None or queue is None:
            return
        envelope = Envelope(
            type=CatalogueKey.QUERY.value, to=ADDRESS_BROADCAST,
            sender=Address.service(self._service), data={},
        )
        self._heard.clear()
        try:
            await producer.publish(
                envelope, exchange, CatalogueKey.QUERY.value, kind=MessageKind.EVENT,
                mandatory=True, reply_to=queue.name,
            )
        except Unroutable:
            return  # no service listens: nothing to wait for
        except BrokerUnavailable as exc:
            log.warning("catalogue query not confirmed", extra={"reason": str(exc)})
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        quiet = wait_s
        while (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._heard.wait(), min(quiet, remaining))
            except TimeoutError:
                return
            self._heard.clear()
            quiet = QUERY_QUIET_S


def _merge(kind: str, declared: list[CommandType]) -> CommandType:
    """One type declared by several instances: every signed-in user may send it only if
    every declaration says so; otherwise the roles of any declaration that restricts it."""
    restricting = [c.roles for c in declared if c.roles is not None]
    roles = frozenset().union(*restricting) if restricting else None
    description = next((c.description for c in declared if c.description), "")
    return CommandType(kind, roles, description)
