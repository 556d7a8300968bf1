"""Consuming a command work queue: decode, hand to the service, then ack, requeue or dead-letter.

Every service that executes commands (cat_relay, runner, excel_worker) consumes its
``warren.cmd.<type>`` queue through :class:`WorkConsumer`. The handler's outcome decides
what happens to the message:

- it returns: the message is acked;
- it raises :class:`Reject`: the message is dead-lettered at once (it can never succeed);
- it raises a failure that the consumer's :class:`RetryPolicy` calls transient, while
  the delivery is still held: the policy runs the handler again in place. Services pass
  ``shared.db.outage.RetryWhileUnavailable``: the database away, retried after a capped
  backoff (0.1 s doubling to 5 s) for up to 5 minutes, then as below. Returning the
  message at once would burn the delivery limit in milliseconds and dead-letter work
  that succeeds a moment later. Handlers are idempotent anyway (a redelivery runs them
  again), so running one again in place is safe. Without a policy nothing is retried in
  place. Broker failures are not retried in place: the delivery is usually void by
  then, and the broker redelivers it;
- it raises anything else: the message is returned to the queue. The quorum queue's
  delivery limit (``x-delivery-limit``) dead-letters it after a few returns, so a
  poison message never loops forever. A failure because the broker is away (its
  delivery lost with the connection, or a publish on a channel not yet restored) is
  expected during a broker restart: a warning, not an error. A consumer given
  ``on_given_up`` dead-letters the last delivery the limit allows itself, after telling
  that callback (a user service tells the sender that its command failed): the broker
  would drop it into the dead letters without saying so to anyone.

A body that is not a valid envelope, or a command whose ``from`` is not a user, is
dead-lettered without reaching the handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPConnectionError, ChannelInvalidStateError

from shared.logging import correlated
from shared.messaging.broker import (
    WORK_QUEUE_DELIVERY_LIMIT,
    BrokerUnavailable,
    declare_work_queue,
)
from shared.messaging.envelope import Envelope, EnvelopeError, decode
from shared.messaging.names import Command, Kind

log = logging.getLogger(__name__)

DELIVERY_COUNT_HEADER = "x-delivery-count"


class Reject(Exception):
    """The command can never succeed: dead-letter it now instead of retrying."""


Handler = Callable[[Envelope, AbstractIncomingMessage], Awaitable[None]]
GivenUp = Callable[[Envelope, Exception], Awaitable[None]]
QueueDeclarer = Callable[[AbstractChannel], Awaitable[AbstractQueue]]


class RetryPolicy(Protocol):
    """Runs ``attempt``, and runs it again in place while it fails in a way the policy
    calls transient and ``worth_it()`` holds, waiting as the policy says; then raises
    its error. Given by the service that builds the consumer (the messaging layer does
    not know what a transient failure is)."""

    async def __call__(
        self, attempt: Callable[[], Awaitable[None]], *, worth_it: Callable[[], bool]
    ) -> None: ...


async def settle(outcome: Awaitable[None]) -> None:
    """Await an ack, nack or reject, which fails when the delivery is void: after a
    connection or channel loss the broker has taken the message back and redelivers it."""
    try:
        await outcome
    except Exception:
        log.warning("could not settle a delivery; the broker redelivers it", exc_info=True)


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the quorum queue delivered this message before (0 the first time)."""
    value = (message.headers or {}).get(DELIVERY_COUNT_HEADER, 0)
    return value if isinstance(value, int) else 0


def _broker_away(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker connection, or one of its channels, is away."""
    return isinstance(exc, (BrokerUnavailable, ChannelInvalidStateError, AMQPConnectionError))


def last_delivery(message: AbstractIncomingMessage) -> bool:
    """Whether returning this delivery to its queue would dead-letter it: the quorum queue
    dead-letters a message returned more than ``x-delivery-limit`` times."""
    return delivery_count(message) >= WORK_QUEUE_DELIVERY_LIMIT


def still_held(message: AbstractIncomingMessage) -> bool:
    """Whether the delivery is still this consumer's: its channel is open. After a broker
    connection loss the broker has taken it back and redelivers it, perhaps elsewhere."""
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


class WorkConsumer:
    """Competing consumer of one command type's durable work queue."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        command: Command | str,
        handler: Handler,
        *,
        prefetch: int,
        on_rejected: Callable[[str], None] | None = None,
        declare: QueueDeclarer | None = None,
        retry: RetryPolicy | None = None,
        on_given_up: GivenUp | None = None,
    ) -> None:
        """``declare`` consumes another queue of this command's envelopes instead of its
        work queue: the runner moves accepted starts into a queue of its own.
        ``retry`` runs a failed handler again in place (see the module's docstring);
        without it, every failure returns the command to the queue at once.
        ``on_given_up`` is awaited when the handler failed on the last delivery the queue
        allows, before this consumer dead-letters it (see the module's docstring)."""
        self._connection = connection
        self._declare = declare
        self._command = str(command)
        self._handler = handler
        self._prefetch = prefetch
        self._on_rejected = on_rejected or (lambda _reason: None)
        self._retry = retry
        self._on_given_up = on_given_up
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        channel = await self._connection.channel()
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=self._prefetch)
        self._channel = channel
        if self._declare is not None:
            self._queue = await self._declare(channel)
        else:
            self._queue = await declare_work_queue(channel, self._command)
        self._tag = await self._queue.consume(self._on_message)

    def is_ready(self) -> bool:
        channel = self._channel
        return (
            self._tag is not None
            and channel is not None
            and not channel.is_closed
            and self._connection.connected.is_set()
        )

    async def stop_consuming(self) -> None:
        """Take no new deliveries; those already received keep running."""
        queue, tag = self._queue, self._tag
        self._tag = None
        if queue is not None and tag is not None and self._connection.connected.is_set():
            await queue.cancel(tag)

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight handlers; False if some were still running at the deadline."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        """Cancel what is still running (the broker requeues it) and close the channel."""
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Handlers run as tasks so that up to ``prefetch`` commands proceed at once.
        task = asyncio.create_task(self._handle(message))
        self._in_flight.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not self._in_flight:
            self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        # This task's logs and publishes carry the id of the work it does (shared/logging.py).
        with correlated(message.correlation_id or message.message_id):
            await self._handle_correlated(message)

    async def _handle_correlated(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = decode(message.body)
            if envelope.sender.kind is not Kind.USER:
                raise EnvelopeError(f"a command must come from a user, not {envelope.sender}")
            if envelope.type != self._command:
                raise EnvelopeError(
                    f"envelope of type {envelope.type!r} on the {self._command} queue"
                )
        except EnvelopeError as exc:
            await self._dead_letter(message, str(exc))
            return
        try:
            await self._run_handler(envelope, message)
        except Reject as exc:
            await self._dead_letter(message, str(exc))
            return
        except asyncio.CancelledError:
            await settle(message.nack(requeue=True))
            raise
        except Exception as exc:
            details = {"command": envelope.type, "id": envelope.id,
                       "deliveries": delivery_count(message) + 1}
            if still_held(message) and not _broker_away(exc):
                if self._on_given_up is not None and last_delivery(message):
                    log.error("command failed on its last delivery", extra=details,
                              exc_info=True)
                    await self._give_up(envelope, exc)
                    await self._dead_letter(message, f"failed {details['deliveries']} times")
                    return
                log.exception("command failed; returned to the queue", extra=details)
            else:
                # Expected while the broker restarts (its channels are restored one by
                # one); an outage that lasts is logged at ERROR by ConnectionWatch.
                log.warning("command met the broker away; returned to the queue",
                            extra=details, exc_info=True)
            await settle(message.nack(requeue=True))
            return
        await settle(message.ack())

    async def _run_handler(self, envelope: Envelope, message: AbstractIncomingMessage) -> None:
        """The handler, run again in place as the retry policy says while the delivery is
        still held. (Its log lines carry the command's correlation id.)"""
        if self._retry is None:
            await self._handler(envelope, message)
            return
        await self._retry(
            lambda: self._handler(envelope, message), worth_it=lambda: still_held(message)
        )

    async def _give_up(self, envelope: Envelope, exc: Exception) -> None:
        assert self._on_given_up is not None
        try:
            await self._on_given_up(envelope, exc)
        except Exception:
            log.warning("could not report a command given up", exc_info=True)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.warning(
            "command dead-lettered",
            extra={"queue": self._command, "reason": reason, "message_id": message.message_id},
        )
        self._on_rejected(reason)
        await settle(message.reject(requeue=False))
