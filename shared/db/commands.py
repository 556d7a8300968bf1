"""Commands a service has handled, so that a redelivery does not run its handler again
(``warren.service``; docs/extending.md, "Your own services").

A row is keyed by the service's name and the command's envelope id. :meth:`CommandStore.claim`
is called before the handler runs: it records the attempt and says whether the command
still needs handling. :meth:`CommandStore.complete` is called once the handler's outcome
(its result or its :class:`~warren.service.CommandError`) has been published; from then
on every claim of that id answers False. A process that stops between the handler's
return and ``complete`` leaves the row unfinished, and the redelivery runs the handler
again: handling is at least once, and exactly once only from the record on.

Rows of completed commands are deleted after a retention period (:meth:`forget`): a
duplicate arrives within seconds of the original (a redelivery after a lost
acknowledgement, a client that sent twice), never days later. Blocking: run in an
executor.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from shared.db.models import Base, UtcDateTime, utcnow


class HandledCommand(Base):
    __tablename__ = "handled_commands"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    command_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_claimed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True, index=True)


class CommandStore:
    """Blocking data access to ``handled_commands``; async callers run it in an executor."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def claim(self, service: str, command_id: str) -> bool:
        """Record an attempt at ``command_id``; False if it was completed before (the
        handler must not run again), True otherwise."""
        for _ in range(2):  # a concurrent first claim wins the insert; then read its row
            try:
                with self._sessions.begin() as session:
                    row = session.get(HandledCommand, (service, command_id))
                    if row is None:
                        session.add(HandledCommand(
                            service=service, command_id=command_id,
                            first_claimed_at=utcnow(), attempts=1,
                        ))
                        return True
                    if row.completed_at is not None:
                        return False
                    row.attempts += 1
                    return True
            except IntegrityError:
                continue
        raise RuntimeError(f"command {command_id!r} of {service!r} could not be claimed")

    def complete(self, service: str, command_id: str) -> None:
        """Record that ``command_id`` was handled and its outcome published."""
        with self._sessions.begin() as session:
            done = session.execute(
                update(HandledCommand)
                .where(HandledCommand.service == service,
                       HandledCommand.command_id == command_id)
                .values(completed_at=utcnow())
            )
            if done.rowcount == 0:  # type: ignore[attr-defined]
                now = utcnow()
                session.add(HandledCommand(
                    service=service, command_id=command_id, first_claimed_at=now,
                    attempts=1, completed_at=now,
                ))

    def attempts(self, service: str, command_id: str) -> int:
        """How many times the handler of ``command_id`` was started (0: never)."""
        with self._sessions() as session:
            found = session.scalar(
                select(HandledCommand.attempts).where(
                    HandledCommand.service == service, HandledCommand.command_id == command_id
                )
            )
            return found or 0

    def forget(self, before: datetime) -> int:
        """Delete the records of commands completed before ``before``; how many."""
        with self._sessions.begin() as session:
            result = session.execute(
                delete(HandledCommand).where(HandledCommand.completed_at < before)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]
