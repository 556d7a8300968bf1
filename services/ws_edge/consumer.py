"""The edge's own event queue: declared, bound per held key, consumed and fanned out."""

from __future__ import annotations

import logging
import time

from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from shared.messaging import BROADCAST, EnvelopeError, decode
from shared.messaging.broker import declare_exchanges, edge_queue_arguments
from shared.messaging.names import edge_queue_name
from services.ws_edge.hub import Hub, TextFramer
from services.ws_edge.metrics import EdgeMetrics

log = logging.getLogger(__name__)


class EventConsumer:
    """Consumes ``warren.events`` for this edge; also the :class:`Binder` for its queue."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        hub: Hub,
        metrics: EdgeMetrics,
        instance_id: str,
        prefetch: int,
    ) -> None:
        self._connection = connection
        self._hub = hub
        self._metrics = metrics
        self._queue_name = edge_queue_name(instance_id)
        self._prefetch = prefetch
        self._framer = TextFramer()
        self._channel: AbstractRobustChannel | None = None
        self._events: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None

    @property
    def queue_name(self) -> str:
        return self._queue_name

    async def start(self) -> None:
        channel = await self._connection.channel()
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=self._prefetch)
        events, _commands = await declare_exchanges(channel)
        queue = await channel.declare_queue(
            self._queue_name, exclusive=True, auto_delete=True, arguments=edge_queue_arguments()
        )
        await queue.bind(events, routing_key=BROADCAST)
        self._metrics.bindings.set(1)
        self._channel, self._events, self._queue = channel, events, queue
        self._consumer_tag = await queue.consume(self._on_message)

    def is_ready(self) -> bool:
        channel = self._channel
        return (
            self._consumer_tag is not None
            and channel is not None
            and self._connection.connected.is_set()
            and not channel.is_closed
        )

    async def stop(self) -> None:
        """Stop consuming; in-flight messages are requeued by the broker on close."""
        queue, tag = self._queue, self._consumer_tag
        self._consumer_tag = None
        if queue is not None and tag is not None and self._connection.connected.is_set():
            await queue.cancel(tag)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def bind(self, key: str) -> None:
        # During a reconnect, wait for the channel to be restored: a binding made
        # then is recorded by the robust queue and restored after later outages.
        assert self._channel is not None and self._queue is not None and self._events is not None
        await self._channel.ready()
        await self._queue.bind(self._events, routing_key=key)

    async def unbind(self, key: str) -> None:
        assert self._channel is not None and self._queue is not None and self._events is not None
        await self._channel.ready()
        await self._queue.unbind(self._events, routing_key=key)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = decode(message.body)
            key = envelope.to.routing_key
            if key != message.routing_key:
                raise EnvelopeError(
                    f"envelope to {envelope.to} arrived under routing key {message.routing_key!r}"
                )
        except EnvelopeError as exc:
            self._metrics.events_rejected.inc()
            log.warning(
                "rejected event",
                extra={"reason": str(exc), "routing_key": message.routing_key,
                       "message_id": message.message_id},
            )
            await message.reject(requeue=False)
            return
        frame = self._framer.text(message.body)
        delivered = self._hub.dispatch(key, frame)
        kind = envelope.to.kind
        self._metrics.received[kind].inc()
        if delivered:
            self._metrics.delivered[kind].inc(delivered)
            self._metrics.latency.observe(max(0.0, time.time() - envelope.ts))
        await message.ack()
