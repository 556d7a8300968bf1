"""A service's side of the catalogue: announce what it offers, and keep announcing it.

Every process that offers something runs one :class:`Advertiser`. It announces its
:class:`~shared.catalogue.model.Offer` on ``warren.catalogue`` at start, again every
third of its time to live (``WARREN_CATALOGUE_TTL_S``) and after the broker connection
comes back, answers an edge's query at once (to that edge's queue), and withdraws the
offer when it stops. An instance killed without withdrawing stops being offered when
the time to live of its last announcement runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Final

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from shared.catalogue.model import Offer, announcement_data
from shared.config import CommonSettings
from shared.messaging.envelope import Envelope
from shared.messaging.names import (
    ADDRESS_BROADCAST,
    CATALOGUE_EXCHANGE,
    Address,
    CatalogueKey,
    catalogue_queries_queue_name,
    is_catalogue_view_queue,
)
from shared.messaging.producer import BrokerUnavailable, MessageKind, Producer, Unroutable

log = logging.getLogger(__name__)

# Announcements per time to live: two may be lost before an edge forgets the instance.
ANNOUNCEMENTS_PER_TTL: Final = 3
STOP_TIMEOUT_S: Final = 5.0


async def advertise(
    connection: AbstractRobustConnection, common: CommonSettings, service: str, offer: Offer
) -> Advertiser:
    """Announce ``offer`` as ``service`` with this process's instance id and
    ``WARREN_CATALOGUE_TTL_S``, until the advertiser returned is stopped. Call it once
    the process consumes what it offers, and stop it first when the process stops."""
    return await Advertiser.start(
        connection, service=service, instance_id=common.instance_id, offer=offer,
        ttl_s=common.catalogue_ttl_s,
    )


async def declare_catalogue_exchange(producer: Producer) -> AbstractExchange:
    return await producer.channel.declare_exchange(
        CATALOGUE_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )


class Advertiser:
    """Announces one process's offer; ``start`` once, ``stop`` once (or ``async with``)."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        *,
        service: str,
        instance_id: str,
        offer: Offer,
        ttl_s: float,
    ) -> None:
        self._connection = connection
        self._sender = Address.service(service)
        self._instance = instance_id
        self._offer = offer
        self._ttl_s = ttl_s
        self._producer: Producer | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._failing = False  # whether the last announcement failed (logged once)

    @classmethod
    async def start(
        cls,
        connection: AbstractRobustConnection,
        *,
        service: str,
        instance_id: str,
        offer: Offer,
        ttl_s: float,
    ) -> Advertiser:
        """Announce ``offer`` (confirmed by the broker before this returns) and keep it
        announced until :meth:`stop`."""
        advertiser = cls(
            connection, service=service, instance_id=instance_id, offer=offer, ttl_s=ttl_s
        )
        await advertiser._open()
        return advertiser

    async def __aenter__(self) -> Advertiser:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _open(self) -> None:
        self._producer = producer = await Producer.open(self._connection)
        self._exchange = await declare_catalogue_exchange(producer)
        self._queue = queue = await producer.channel.declare_queue(
            catalogue_queries_queue_name(self._instance), exclusive=True, auto_delete=True
        )
        await queue.bind(self._exchange, routing_key=CatalogueKey.QUERY.value)
        await queue.consume(self._on_query)
        await self._announce()
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._heartbeat = asyncio.create_task(self._beat(), name="catalogue-heartbeat")

    async def stop(self) -> None:
        """Withdraw the offer (best effort: its time to live bounds a failure) and stop."""
        self._connection.reconnect_callbacks.discard(self._on_reconnect)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self._publish(
                    producer, CatalogueKey.WITHDRAW, {"instance": self._instance}, None
                )
                await producer.channel.close()
        except (BrokerUnavailable, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            log.warning("catalogue withdrawal not confirmed; edges forget this instance "
                        "after its time to live", extra={"reason": repr(exc)})

    # -- announcing ------------------------------------------------------------

    async def _beat(self) -> None:
        interval = self._ttl_s / ANNOUNCEMENTS_PER_TTL
        while True:
            await asyncio.sleep(interval)
            await self._announce_logged()

    def _on_reconnect(self, *_args: object) -> None:
        # Edges dropped nothing, but their queues may have lost what was in flight.
        asyncio.ensure_future(self._announce_logged())

    async def _announce_logged(self, reply_to: str | None = None) -> None:
        try:
            await self._announce(reply_to)
        except (BrokerUnavailable, Unroutable) as exc:
            if not self._failing:
                log.warning("catalogue announcement failed; retrying at the next one",
                            extra={"reason": str(exc)})
            self._failing = True
            return
        if self._failing:
            log.info("catalogue announcements resumed")
        self._failing = False

    async def _announce(self, reply_to: str | None = None) -> None:
        producer = self._producer
        if producer is None:
            return
        data = announcement_data(self._instance, self._ttl_s, self._offer)
        await self._publish(producer, CatalogueKey.ANNOUNCE, data, reply_to)

    async def _publish(
        self, producer: Producer, key: CatalogueKey, data: dict[str, object],
        reply_to: str | None,
    ) -> None:
        envelope = Envelope(type=key.value, to=ADDRESS_BROADCAST, sender=self._sender, data=data)
        if reply_to is None:
            assert self._exchange is not None
            await producer.publish(
                envelope, self._exchange, key.value, kind=MessageKind.EVENT, mandatory=False
            )
        else:
            await producer.publish(
                envelope, producer.default_exchange, reply_to, kind=MessageKind.EVENT,
                mandatory=False,
            )

    async def _on_query(self, message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            # The asking edge named its own queue; a query without one gets an
            # announcement for every edge.
            reply_to = message.reply_to
            if reply_to and not is_catalogue_view_queue(reply_to):
                log.warning("catalogue query refused: its reply_to is not an edge's view queue",
                            extra={"reply_to": reply_to[:200]})
                return
            await self._announce_logged(reply_to or None)
