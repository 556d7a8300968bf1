"""Telling a task's owner: live progress events, and durable done/failed notifications.

Progress is an ordinary transient event (lost if nobody listens, which is fine).
``excel.done`` and ``excel.failed`` are first stored as notification rows (in the same
transaction that finishes the task), then published with ``mandatory`` set: if the
broker routes the event to some edge queue, an edge holds the user's key, so the user
has a socket open and the row is marked delivered. If the broker returns it, no socket
is open and the row stays pending until the edge delivers it after the next ``welcome``.
"""

from __future__ import annotations

import logging
from typing import Final

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection, DeliveryMode
from aio_pika.exceptions import PublishError

from shared.messaging.broker import CONTENT_TYPE, declare_exchanges
from shared.messaging.envelope import Envelope, encode
from shared.messaging.names import Address, Event

log = logging.getLogger(__name__)

SENDER: Final = Address.service("excel_worker")


def download_url(task_id: str) -> str:
    return f"/api/exports/{task_id}/file"


def done_event(task_id: str, owner: str, filename: str, size: int, rows: int) -> Envelope:
    return Envelope(
        type=Event.EXCEL_DONE.value, to=Address.user(owner), sender=SENDER,
        id=f"{task_id}-done",
        data={"task_id": task_id, "filename": filename, "size": size, "rows": rows,
              "download_url": download_url(task_id)},
    )


def failed_event(task_id: str, owner: str, code: str, message: str) -> Envelope:
    return Envelope(
        type=Event.EXCEL_FAILED.value, to=Address.user(owner), sender=SENDER,
        id=f"{task_id}-failed", data={"task_id": task_id, "code": code, "message": message},
    )


def progress_event(task_id: str, owner: str, rows: int, total: int) -> Envelope:
    percent = round(100.0 * rows / total, 1) if total else 100.0
    return Envelope(
        type=Event.EXCEL_PROGRESS.value, to=Address.user(owner), sender=SENDER,
        data={"task_id": task_id, "rows": rows, "total": total, "percent": percent},
    )


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

