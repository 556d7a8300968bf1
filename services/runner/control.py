"""The replica's control queue: how any runner forwards ``run.stop`` to the run's owner.

Each replica declares an exclusive, auto-delete queue bound to the direct exchange
``warren.runner.control`` under its instance id. A forward is published mandatory with
confirms: if the owner's queue is gone (the replica died), the publish is returned and
:class:`~shared.messaging.producer.Unroutable` is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from shared.messaging import Envelope, EnvelopeError, decode
from shared.messaging.names import (
    RUNNER_CONTROL_EXCHANGE,
    runner_control_key,
    runner_control_queue_name,
)
from shared.messaging.producer import PUBLISH_TIMEOUT_S, MessageKind, Producer

log = logging.getLogger(__name__)

ControlHandler = Callable[[Envelope], Awaitable[None]]


class ControlLink:
    def __init__(
        self, connection: AbstractRobustConnection, instance_id: str, handler: ControlHandler
    ) -> None:
        self._connection = connection
        self._instance_id = instance_id
        self._handler = handler
        self._channel: AbstractRobustChannel | None = None
        self._producer: Producer | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=32)
        self._channel = channel
        self._producer = Producer(channel)
        self._exchange = await channel.declare_exchange(
            RUNNER_CONTROL_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        self._queue = await channel.declare_queue(
            runner_control_queue_name(self._instance_id), exclusive=True, auto_delete=True
        )
        await self._queue.bind(self._exchange, routing_key=runner_control_key(self._instance_id))
        self._tag = await self._queue.consume(self._on_message)

    def is_ready(self) -> bool:
        channel = self._channel
        return (
            self._tag is not None
            and channel is not None
            and not channel.is_closed
            and self._connection.connected.is_set()
        )

    async def forward(
        self, replica: str, envelope: Envelope, timeout: float = PUBLISH_TIMEOUT_S
    ) -> None:
        """Deliver ``envelope`` to ``replica``'s control queue; Unroutable if it has none."""
        assert self._producer is not None and self._exchange is not None
        await self._producer.publish(
            envelope, self._exchange, runner_control_key(replica),
            kind=MessageKind.COMMAND, mandatory=True, timeout=timeout,
        )

    async def close(self) -> None:
        queue, tag = self._queue, self._tag
        self._tag = None
        try:
            if queue is not None and tag is not None and self._connection.connected.is_set():
                await queue.cancel(tag)
        finally:
            if self._channel is not None and not self._channel.is_closed:
                await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Control messages are never retried: a failure is logged and the message dropped.
        async with message.process(requeue=False, ignore_processed=True):
            try:
                envelope = decode(message.body)
            except EnvelopeError as exc:
                log.warning("bad control message dropped", extra={"reason": str(exc)})
                return
            try:
                await self._handler(envelope)
            except Exception:
                log.exception("control message failed", extra={"id": envelope.id})
