"""The runs queue: accepted runs wait here until a replica has a free slot.

The replica that consumes a ``run.start`` checks it, records the run as queued and
puts the command into ``warren.runner.runs``. Every replica consumes that queue with a
prefetch of ``MAX_CONCURRENT`` and holds each delivery while its run executes, so the
broker hands a waiting run to the first replica with a free slot, and gives the runs
of a replica that dies back to the queue. Bad input and the per-user limit are answered
at once, however busy the replicas are.
"""

from __future__ import annotations

from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from shared.messaging import Envelope
from shared.messaging.broker import declare_quorum_queue
from shared.messaging.names import RUNNER_RUNS_QUEUE
from shared.messaging.producer import PUBLISH_TIMEOUT_S, MessageKind, Producer


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
        self._producer: Producer | None = None

    async def start(self) -> None:
        producer = await Producer.open(self._connection)
        await declare_runs_queue(producer.channel)
        self._producer = producer

    async def put(self, envelope: Envelope, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        """Queue the run; raise :class:`~shared.messaging.producer.BrokerUnavailable` if
        the broker did not confirm it (:class:`~shared.messaging.producer.Unroutable` if
        the queue is gone)."""
        assert self._producer is not None
        await self._producer.publish(
            envelope, self._producer.default_exchange, RUNNER_RUNS_QUEUE,
            kind=MessageKind.COMMAND, mandatory=True, timeout=timeout,
        )

    async def close(self) -> None:
        if self._producer is not None and not self._producer.channel.is_closed:
            await self._producer.channel.close()
