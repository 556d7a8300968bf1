"""Durable per-user notifications: events a user must see even if offline when they happened.

A service writes the notification (the full encoded event envelope) in the same
transaction as the state change it reports, then publishes the same envelope live.
The row stays pending until it is known to have reached the user:

- the publisher marks it delivered when the broker routed the live event to an edge
  queue holding the user's key (the user had a socket open), or
- the edge delivers every pending row right after ``welcome`` and marks those it wrote.

See docs/exports.md ("Notifications") for the exact guarantee. Blocking: run in an executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    DateTime,
    String,
    Text,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from shared.db.models import Base, utcnow


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )


#: The table itself: the edge's lookups read its columns, cheaper than loading ORM objects.
_TABLE: Final = Notification.__table__
_UNDELIVERED: Final = _TABLE.c.delivered_at.is_(None)
#: Which of the users ``ids`` have notifications pending: asked on every connect, so
#: built once (:func:`waiting_users`).
_WAITING: Final = (
    select(_TABLE.c.user_id)
    .where(_TABLE.c.user_id.in_(bindparam("ids", expanding=True)), _UNDELIVERED)
    .distinct()
)


@dataclass(frozen=True, slots=True)
class PendingNotification:
    id: str
    type: str
    body: bytes


def waiting_users(connection: Connection, user_ids: Sequence[str]) -> set[str]:
    """Which of ``user_ids`` have notifications pending: one indexed query, on a
    connection the caller holds (the edge asks it with its other read of each connect,
    services/ws_edge/admission.py). It nearly always finds none."""
    return set(connection.scalars(_WAITING, {"ids": list(user_ids)}))


def make_notification(envelope_id: str, user_id: str, type_: str, body: bytes) -> Notification:
    """A pending notification row whose ``body`` is the encoded event envelope."""
    return Notification(
        id=envelope_id, user_id=user_id, type=type_, body=body.decode(), created_at=utcnow()
    )


class NotificationStore:
    """Blocking data access to ``notifications``."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def pending(
        self, user_ids: Sequence[str], limit: int = 100
    ) -> dict[str, list[PendingNotification]]:
        """Each user's undelivered notifications, oldest first, at most ``limit`` each; a
        user with none is left out. The edge asks this for the users that
        :func:`waiting_users` found waiting when their socket opened."""
        table = _TABLE
        numbered = (
            select(
                table.c.id, table.c.user_id, table.c.type, table.c.body,
                func.row_number().over(
                    partition_by=table.c.user_id,
                    order_by=(table.c.created_at, table.c.id),
                ).label("n"),
            )
            .where(table.c.user_id.in_(list(user_ids)), _UNDELIVERED)
            .subquery()
        )
        with self._sessions() as session:
            rows = session.connection().execute(
                select(numbered.c.id, numbered.c.user_id, numbered.c.type, numbered.c.body)
                .where(numbered.c.n <= limit)
                .order_by(numbered.c.user_id, numbered.c.n)
            )
            found: dict[str, list[PendingNotification]] = {}
            for id_, user_id, type_, body in rows:
                found.setdefault(user_id, []).append(PendingNotification(id_, type_, body.encode()))
            return found

    def mark_delivered(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._sessions.begin() as session:
            result = session.execute(
                update(Notification)
                .where(Notification.id.in_(list(ids)), Notification.delivered_at.is_(None))
                .values(delivered_at=utcnow())
            )
            return cast("CursorResult[Any]", result).rowcount

    def get(self, notification_id: str) -> Notification | None:
        with self._sessions() as session:
            return session.get(Notification, notification_id)
