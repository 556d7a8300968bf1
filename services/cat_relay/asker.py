"""``POST /send`` asks through ``chat.ask`` like everyone else and waits for the outcome.

Going through the work queue keeps the guarantees of docs/cat_relay.md for HTTP asks
too: they are answered in order with the user's other asks, by the replica that owns
the user's session, over its one Cat socket. The ask names this replica's reply queue
in ``reply_to``; the replica answering it publishes only the outcome there, correlated
by the ask id.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from shared.messaging import Address, Envelope, EnvelopeError, decode
from shared.messaging.broker import Publisher
from shared.messaging.names import Command, chat_replies_queue_name

log = logging.getLogger(__name__)


class Abandoned(Exception):
    """This replica stopped before the outcome of the ask came back."""


class Asker:
    def __init__(
        self, connection: AbstractRobustConnection, publisher: Publisher, instance_id: str
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self._queue_name = chat_replies_queue_name(instance_id)
        self._queue: AbstractQueue | None = None
        self._waiting: dict[str, asyncio.Future[Envelope]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        channel = await self._connection.channel()
        self._queue = await channel.declare_queue(
            self._queue_name, exclusive=True, auto_delete=True
        )
        await self._queue.consume(self._on_outcome, no_ack=True)

    async def ask(self, user_id: str, text: str, timeout: float) -> Envelope:
        """The ``chat.reply`` or ``chat.error`` for one ask; :class:`TimeoutError` without one.

        Raises :class:`~shared.messaging.broker.BrokerUnavailable` or
        :class:`~shared.messaging.broker.Unroutable` when the ask cannot be sent.
        """
        user = Address.user(user_id)
        ask = Envelope(type=Command.CHAT_ASK, to=user, sender=user, data={"text": text})
        outcome: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._waiting[ask.id] = outcome
        self._idle.clear()
        try:
            await self._publisher.publish_command(ask, reply_to=self._queue_name)
            return await asyncio.wait_for(outcome, timeout)
        finally:
            del self._waiting[ask.id]
            if not self._waiting:
                self._idle.set()

    def abandon(self) -> None:
        """At the shutdown deadline: the asks still waiting fail with :class:`Abandoned`."""
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(Abandoned("the relay is shutting down"))

    async def wait_answered(self, timeout: float) -> bool:
        """Wait until no ask waits for its outcome; False if some still did at the deadline."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        waiter = self._waiting.get(message.correlation_id or "")
        if waiter is None or waiter.done():
            return  # the asker gave up, or a copy of an outcome already received
        try:
            waiter.set_result(decode(message.body))
        except EnvelopeError as exc:
            log.warning("ignored a malformed outcome", extra={"reason": str(exc)})
