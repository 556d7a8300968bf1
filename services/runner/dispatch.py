"""The runs queue: accepted runs wait here until a replica has a free slot.

The replica that consumes a ``run.start`` checks it, records the run as queued and
puts the command into ``warren.runner.runs``. Every replica consumes that queue with a
prefetch of ``MAX_CONCURRENT`` and holds each delivery while its run executes, so the
broker hands a waiting run to the first replica with a free slot, and gives the runs
of a replica that dies back to the queue. Bad input and the per-user limit are answered
at once, however busy the replicas are.
"""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection, DeliveryMode
from aio_pika.exceptions import PublishError

from shared.messaging import Envelope, encode
from shared.messaging.broker import (
    CONTENT_TYPE,
    BrokerUnavailable,
    Unroutable,
    declare_quorum_queue,
)
from shared.messaging.names import RUNNER_RUNS_QUEUE


async def declare_runs_queue(channel: AbstractChannel) -> AbstractQueue:
    """The durable quorum queue of waiting runs, with its dead-letter queue.

    A run whose delivery keeps coming back (its replicas keep dying) is dead-lettered
    after the delivery limit; it is still ``queued`` or ``running`` in the database,
    where the queue-wait limit or the heartbeat sweep ends it.
    """
    return await declare_quorum_queue(channel, RUNNER_RUNS_QUEUE)


class RunQueue:
    """Puts accepted ``run.start`` commands into the runs queue, with confirms."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_runs_queue(channel)
        self._channel = channel

    async def put(self, envelope: Envelope, timeout: float = 5.0) -> None:
        """Queue the run; raise :class:`BrokerUnavailable` if the broker did not confirm."""
        assert self._channel is not None
        message = aio_pika.Message(
            encode(envelope), content_type=CONTENT_TYPE, message_id=envelope.id,
            type=envelope.type, delivery_mode=DeliveryMode.PERSISTENT,
        )
        try:
            await self._channel.default_exchange.publish(
                message, routing_key=RUNNER_RUNS_QUEUE, mandatory=True, timeout=timeout
            )
        except PublishError as exc:
            raise Unroutable(f"no queue {RUNNER_RUNS_QUEUE}") from exc
        except (asyncio.TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError) as exc:
            raise BrokerUnavailable(f"run not queued: {exc!r}") from exc

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
