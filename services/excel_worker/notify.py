"""Publishing an owner's done/failed event live, and knowing whether anyone received it.

``excel.done`` and ``excel.failed`` are first stored as notification rows (in the same
transaction that finishes the task), then published with ``mandatory`` set: if the
broker routes the event to some edge queue, an edge holds the user's key, so the user
has a socket open and the row is marked delivered. If the broker returns it, no socket
is open and the row stays pending until the edge delivers it after the next ``welcome``.
Progress events are ordinary transient events (``shared.messaging.broker.Publisher``).
"""

from __future__ import annotations

from shared.messaging.broker import Publisher
from shared.messaging.envelope import Envelope
from shared.messaging.producer import PUBLISH_TIMEOUT_S, Unroutable


class RoutedPublisher:
    """Publishes events with ``mandatory`` and confirms, and says whether they were routed."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def publish(self, envelope: Envelope, *, timeout: float = PUBLISH_TIMEOUT_S) -> bool:
        """True if some queue took the event, False if the broker returned it (nobody bound).

        Raises on broker trouble (not confirmed): the caller keeps the notification pending.
        """
        try:
            await self._publisher.publish_event(envelope, mandatory=True, timeout=timeout)
        except Unroutable:
            return False
        return True
