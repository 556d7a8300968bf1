"""Publishing an owner's done/failed event live, and knowing whether anyone received it.

``excel.done`` and ``excel.failed`` are first stored as notification rows (in the same
transaction that finishes the task), then published with ``mandatory`` set: if the
broker routes the event to some edge queue, an edge holds the user's key, so the user
has a socket open and the row is marked delivered. If the broker returns it, no socket
is open and the row stays pending until the edge delivers it after the next ``welcome``.
Progress events are ordinary transient events (``shared.messaging.broker.Publisher``).
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection, DeliveryMode
from aio_pika.exceptions import PublishError

from shared.messaging.broker import CONTENT_TYPE, declare_exchanges
from shared.messaging.envelope import Envelope, encode


class RoutedPublisher:
    """Publishes events with ``mandatory`` and confirms, and says whether they were routed."""

    def __init__(self, events: AbstractExchange) -> None:
        self._events = events

    @classmethod
    async def open(cls, connection: AbstractRobustConnection) -> RoutedPublisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        events, _commands = await declare_exchanges(channel)
        return cls(events)

    async def publish(self, envelope: Envelope, *, timeout: float = 5.0) -> bool:
        """True if some queue took the event, False if the broker returned it (nobody bound).

        Raises on broker trouble (not confirmed): the caller keeps the notification pending.
        """
        message = aio_pika.Message(
            encode(envelope), content_type=CONTENT_TYPE, message_id=envelope.id,
            correlation_id=envelope.id, type=envelope.type,
            delivery_mode=DeliveryMode.NOT_PERSISTENT,
        )
        try:
            await self._events.publish(
                message, routing_key=envelope.to.routing_key, mandatory=True, timeout=timeout
            )
        except PublishError:
            return False
        return True
