"""The edge's own event queue: declared, bound per held key, consumed and fanned out.

Events are fanned out in batches: every event that arrives in one turn of the event
loop is written in the next one, together (see :meth:`Hub.dispatch_batch`). An edge
that keeps up sees batches of one; one that falls behind catches up with fewer writes
per event. Written events are acknowledged together too, with one ``basic.ack
(multiple)`` at most every ``ACK_DELAY_S`` or every half prefetch window: the edge's
queue is exclusive, so an acknowledgement only paces the broker, it protects nothing.

Deliveries are taken from aiormq's channel as they come, not through aio-pika's
``IncomingMessage``: the edge reads a delivery's body, routing key, tag and redelivered
flag, and building the full message object (every property decoded, every attribute
set through a locking ``__setattr__``) cost more than the rest of the edge's own work on
a single-recipient event. The queue is still declared on aio-pika's robust channel, so
aio-pika declares it again on a new connection; the consumer is started again from the
channel's reopen callback (:meth:`EventConsumer._consume`).

``queue.bind`` and ``queue.unbind`` are synchronous AMQP methods, so the edge binds on
a small pool of channels of its own, never behind the consumer's acks, and on each
channel sends the calls that wait together back to back (:class:`BindPipeline`): a
storm of connects is not held to one broker round trip per key. A key's calls are never
in flight together (``BindingTable`` locks each key), so they stay in order on any
channel. These bindings are not recorded for aio-pika to restore: after a new
connection, ``BindingTable.rebind`` makes them again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Final, NamedTuple, cast

import aiormq.abc
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from pamqp.commands import Basic

from shared.logging import CONNECTION_LOSS
from shared.messaging import BROADCAST, EnvelopeError, Kind, decode
from shared.messaging.broker import (
    declare_edge_exchange,
    declare_exchanges,
    edge_queue_arguments,
)
from shared.messaging.names import EDGE_EXCHANGE, edge_queue_name
from services.ws_edge.bind_pipeline import BindPipeline
from services.ws_edge.hub import Hub, TextFramer
from services.ws_edge.metrics import EdgeMetrics

log = logging.getLogger(__name__)

ACK_DELAY_S: Final = 0.01


class Pending(NamedTuple):
    """A valid event waiting for its batch to be written."""

    key: str
    frame: bytes
    event_id: str
    kind: Kind
    ts: float
    delivery: aiormq.abc.DeliveredMessage


class EventConsumer:
    """Consumes ``warren.events`` for this edge; also the :class:`Binder` for its queue."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        hub: Hub,
        metrics: EdgeMetrics,
        instance_id: str,
        prefetch: int,
        bind_channels: int,
    ) -> None:
        self._connection = connection
        self._hub = hub
        self._metrics = metrics
        self._queue_name = edge_queue_name(instance_id)
        self._prefetch = prefetch
        self._bind_channel_count = bind_channels
        self._bind_channels: list[AbstractRobustChannel] = []
        self._pipelines: list[BindPipeline] = []
        self._framer = TextFramer()
        self._channel: AbstractRobustChannel | None = None
        self._consumer_tag: str | None = None
        self._consuming: aiormq.abc.AbstractChannel | None = None  # the tag's channel
        self._batch: list[Pending] = []
        self._unacked: aiormq.abc.DeliveredMessage | None = None  # the last one written
        self._unacked_count = 0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acks: set[asyncio.Task[None]] = set()
        #: The ``ts`` of the last event fanned out: every event routed before that time
        #: was ahead of it in the queue, so it was fanned out too (docs/protocol.md 17.5).
        self.delivered_ts: float | None = None

    @property
    def queue_name(self) -> str:
        return self._queue_name

    async def start(self) -> None:
        channel = await self._connection.channel()
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=self._prefetch)
        events, _commands = await declare_exchanges(channel)
        edges = await declare_edge_exchange(channel, events)
        queue = await channel.declare_queue(
            self._queue_name, exclusive=True, auto_delete=True, arguments=edge_queue_arguments()
        )
        await queue.bind(edges, routing_key=BROADCAST)
        self._metrics.bindings.set(1)
        self._channel = channel
        for index in range(self._bind_channel_count):
            binder = await self._connection.channel()
            assert isinstance(binder, AbstractRobustChannel)
            self._bind_channels.append(binder)
            self._pipelines.append(BindPipeline(
                self._queue_name, EDGE_EXCHANGE, functools.partial(self._bind_channel, index)
            ))
        channel.reopen_callbacks.add(self._consume_again)
        await self._consume()

    async def _consume(self) -> None:
        """Consume the queue on the robust channel's current aiormq channel."""
        assert self._channel is not None
        underlay = await self._channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._cancelled)
        consume_ok = await underlay.basic_consume(self._queue_name, self.on_message)
        self._consuming, self._consumer_tag = underlay, consume_ok.consumer_tag

    async def _cancelled(self, frame: Basic.Cancel) -> None:
        """The broker ended the consumer: the queue is gone (deleted by hand, say).

        Only a new connection declares the queue again and has every held key bound
        again (:meth:`BindingTable.rebind`), so the connection is closed for the robust
        connection to make a new one, as aio-pika does for consumers it knows.
        """
        consuming = self._consuming
        if frame.consumer_tag != self._consumer_tag or consuming is None:
            return
        log.warning("the broker cancelled the edge's consumer: reconnecting",
                    extra={"queue": self._queue_name})
        await consuming.connection.close(ConnectionError("the edge's consumer was cancelled"))

    async def _consume_again(self, _channel: object) -> None:
        # aio-pika has declared the queue again on the new connection (it knows the
        # declaration, not this consumer); a stop() meanwhile leaves it stopped.
        if self._consumer_tag is not None:
            await self._consume()

    def is_ready(self) -> bool:
        channel = self._channel
        return (
            self._consumer_tag is not None
            and channel is not None
            and self._connection.connected.is_set()
            and not channel.is_closed
            and self._consuming is not None
            and not self._consuming.is_closed
        )

    async def stop(self) -> None:
        """Stop consuming; in-flight messages are requeued by the broker on close."""
        consuming, tag = self._consuming, self._consumer_tag
        self._consumer_tag = None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        try:
            if consuming is not None and tag is not None and not consuming.is_closed:
                await consuming.basic_cancel(tag)
            for channel in (*self._bind_channels, self._channel):
                if channel is not None and not channel.is_closed:
                    await channel.close()
        except CONNECTION_LOSS as exc:
            # The connection went away before aio-pika noticed: the broker ends the
            # consumer and its channels with it, and requeues what was in flight.
            log.info("broker connection gone while stopping the consumer",
                     extra={"error": repr(exc)})

    async def bind(self, key: str) -> None:
        await self._pipelines[hash(key) % len(self._pipelines)].bind(key)

    async def unbind(self, key: str) -> None:
        await self._pipelines[hash(key) % len(self._pipelines)].unbind(key)

    async def _bind_channel(self, index: int) -> aiormq.abc.AbstractChannel:
        """Pool channel ``index``, once the queue exists on the current connection."""
        # During a reconnect, wait until the consuming channel is restored: it declares
        # the (new) exclusive queue that the pool channels bind.
        assert self._channel is not None
        await self._channel.ready()
        channel = self._bind_channels[index]
        await channel.ready()
        return await channel.get_underlay_channel()

    async def on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        """One delivery from the queue: rejected (dead-lettered) now, or batched."""
        deliver = message.delivery
        assert isinstance(deliver, Basic.Deliver)
        if deliver.redelivered:
            # Requeued because this edge's channel failed, perhaps after the event was
            # written but before its (grouped) ack: dropped, so none is written twice.
            log.info("redelivered event dropped",
                     extra={"message_id": message.header.properties.message_id})
            await message.channel.basic_ack(_tag(deliver))
            return
        try:
            envelope = decode(message.body)
            key = envelope.to.routing_key
            if key != deliver.routing_key:
                raise EnvelopeError(
                    f"envelope to {envelope.to} arrived under routing key {deliver.routing_key!r}"
                )
        except EnvelopeError as exc:
            self._metrics.events_rejected.inc()
            log.warning(
                "rejected event",
                extra={"reason": str(exc), "routing_key": deliver.routing_key,
                       "message_id": message.header.properties.message_id},
            )
            await message.channel.basic_reject(_tag(deliver), requeue=False)
            return
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._flush)
        self._batch.append(
            Pending(key, self._framer.text(message.body), envelope.id, envelope.to.kind,
                    envelope.ts, message)
        )

    def _flush(self) -> None:
        """Write the batch to the sockets, count it, and have it acknowledged."""
        batch, self._batch = self._batch, []
        try:
            delivered = self._hub.dispatch_batch([(p.key, p.frame, p.event_id) for p in batch])
            self.delivered_ts = batch[-1].ts
            now = time.time()
            traced = log.isEnabledFor(logging.DEBUG)
            for pending, count in zip(batch, delivered):
                if traced:  # the way back of a correlation id (shared/logging.py)
                    properties = pending.delivery.header.properties
                    log.debug("event delivered", extra={
                        "correlation_id": properties.correlation_id,
                        "message_id": properties.message_id,
                        "routing_key": pending.key, "sockets": count,
                    })
                self._metrics.received[pending.kind].inc()
                if count:
                    self._metrics.delivered[pending.kind].inc(count)
                    self._metrics.latency.observe(max(0.0, now - pending.ts))
        finally:
            # Messages are handled in delivery order, so the last one's tag covers all
            # written before it; rejected ones are settled already and not covered again.
            self._unacked = batch[-1].delivery
            self._unacked_count += len(batch)
            if self._unacked_count * 2 >= self._prefetch:
                self._ack_written()
            elif self._ack_timer is None:
                self._ack_timer = asyncio.get_running_loop().call_later(
                    ACK_DELAY_S, self._ack_written
                )

    def _ack_written(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        last, self._unacked, self._unacked_count = self._unacked, None, 0
        if last is not None:
            task = asyncio.create_task(self._ack(last))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)

    async def _ack(self, last: aiormq.abc.DeliveredMessage) -> None:
        assert isinstance(last.delivery, Basic.Deliver)
        try:
            await last.channel.basic_ack(_tag(last.delivery), multiple=True)
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            # The channel closed (the broker went away): its unacknowledged messages
            # went back to the broker with it, there is nothing left to acknowledge.
            log.info("batch not acknowledged: channel closed", extra={"error": repr(exc)})


def _tag(deliver: Basic.Deliver) -> int:
    # pamqp types every field optional; a Basic.Deliver always carries its tag.
    return cast(int, deliver.delivery_tag)
