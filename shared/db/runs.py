"""Runs of the runner service: who started which job where, its state and its output tail.

A run is ``queued`` once accepted, ``running`` once a replica claimed it, then one of
the final statuses. Times are timezone-aware UTC datetimes (:class:`UtcDateTime`), read
back aware from SQLite too, so that heartbeat comparisons and durations behave the same
on SQLite and PostgreSQL. Every state change is a conditional update
(``WHERE status = ...``), so when two replicas race to claim, finish or fail the same
run exactly one of them wins (and only the winner publishes the event).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import orjson
from sqlalchemy import Integer, String, Text, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from shared.db.models import Base, UtcDateTime, utcnow


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"
    TIMEOUT = "timeout"


UNFINISHED: Final = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    job: Mapped[str] = mapped_column(String(64))
    args: Mapped[str] = mapped_column(Text)
    replica: Mapped[str | None] = mapped_column(String(255), index=True, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)  # accepted (queued)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)  # claimed
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)
    line_count: Mapped[int] = mapped_column(Integer, default=0)
    output_bytes: Mapped[int] = mapped_column(Integer, default=0)
    tail: Mapped[str] = mapped_column(Text, default="[]")


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    owner: str
    job: str
    args: dict[str, Any]
    replica: str | None  # None while queued
    status: RunStatus
    reason: str | None
    exit_code: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime
    line_count: int
    output_bytes: int
    tail: list[str]

    @property
    def duration_s(self) -> float:
        """Time the job ran: 0 for a run that ended before a replica started it."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else utcnow()
        return max(0.0, (end - self.started_at).total_seconds())


def _record(row: Run) -> RunRecord:
    return RunRecord(
        id=row.id,
        owner=row.owner,
        job=row.job,
        args=orjson.loads(row.args),
        replica=row.replica,
        status=RunStatus(row.status),
        reason=row.reason,
        exit_code=row.exit_code,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        heartbeat_at=row.heartbeat_at,
        line_count=row.line_count,
        output_bytes=row.output_bytes,
        tail=orjson.loads(row.tail),
    )


class RunLimitReached(RuntimeError):
    """The owner already has as many unfinished (queued or running) runs as allowed."""


class RunExists(RuntimeError):
    """A run with this id is already recorded (a redelivered ``run.start``)."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__(f"run {record.id} already exists ({record.status.value})")
        self.record = record


@dataclass(frozen=True, slots=True)
class Progress:
    """What a replica reports about one of its running runs at each heartbeat."""

    run_id: str
    line_count: int
    output_bytes: int
    tail: Sequence[str]


class RunStore:
    """Blocking data access for runs; async callers run it in an executor."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(
        self,
        run_id: str,
        owner: str,
        job: str,
        args: dict[str, Any],
        *,
        max_per_user: int,
        now: datetime | None = None,
    ) -> RunRecord:
        """Record a new queued run; raise :class:`RunExists` or :class:`RunLimitReached`.

        The per-user count (queued and running runs) and the insert share one
        transaction. Two replicas accepting runs for the same user at the same instant
        may both pass the count on databases without serialisable isolation: the limit
        is best-effort across replicas.
        """
        now = utcnow() if now is None else now
        with self._sessions.begin() as session:
            existing = session.get(Run, run_id)
            if existing is not None:
                raise RunExists(_record(existing))
            unfinished = session.scalar(
                select(func.count())
                .select_from(Run)
                .where(Run.owner == owner, Run.status.in_(UNFINISHED))
            ) or 0
            if unfinished >= max_per_user:
                raise RunLimitReached(
                    f"{owner} already has {unfinished} queued or running run(s); "
                    f"the limit is {max_per_user}"
                )
            row = Run(
                id=run_id,
                owner=owner,
                job=job,
                args=orjson.dumps(args).decode(),
                replica=None,
                status=RunStatus.QUEUED.value,
                created_at=now,
                heartbeat_at=now,
                line_count=0,
                output_bytes=0,
                tail="[]",
            )
            session.add(row)
            session.flush()
            return _record(row)

    def claim(self, run_id: str, replica: str, now: datetime | None = None) -> RunRecord | None:
        """Move a queued run to ``running`` on ``replica``; None if it was no longer queued."""
        now = utcnow() if now is None else now
        with self._sessions.begin() as session:
            done = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.QUEUED.value)
                .values(status=RunStatus.RUNNING.value, replica=replica, started_at=now,
                        heartbeat_at=now)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = session.get(Run, run_id)
            assert row is not None
            return _record(row)

    def get(self, run_id: str) -> RunRecord | None:
        with self._sessions() as session:
            row = session.get(Run, run_id)
            return _record(row) if row is not None else None

    def recent(self, owner: str, limit: int) -> list[RunRecord]:
        with self._sessions() as session:
            rows = session.scalars(
                select(Run).where(Run.owner == owner).order_by(Run.created_at.desc()).limit(limit)
            ).all()
            return [_record(row) for row in rows]

    def activity(
        self,
        owner: str,
        *,
        statuses: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int,
    ) -> list[RunRecord]:
        """The owner's runs, oldest first, filtered on the time they were accepted."""
        query = select(Run).where(Run.owner == owner)
        if statuses:
            query = query.where(Run.status.in_(list(statuses)))
        if since is not None:
            query = query.where(Run.created_at >= since)
        if until is not None:
            query = query.where(Run.created_at < until)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(Run.created_at).limit(limit)).all()
            return [_record(row) for row in rows]

    def heartbeat(
        self, replica: str, progress: Sequence[Progress], now: datetime | None = None
    ) -> list[str]:
        """Refresh the heartbeat, line count and tail of this replica's running runs.

        Returns the ids that are no longer running in the database (another replica
        marked them failed): the caller should end them.
        """
        now = utcnow() if now is None else now
        lost: list[str] = []
        with self._sessions.begin() as session:
            for item in progress:
                done = session.execute(
                    update(Run)
                    .where(
                        Run.id == item.run_id,
                        Run.replica == replica,
                        Run.status == RunStatus.RUNNING.value,
                    )
                    .values(
                        heartbeat_at=now,
                        line_count=item.line_count,
                        output_bytes=item.output_bytes,
                        tail=orjson.dumps(list(item.tail)).decode(),
                    )
                )
                if done.rowcount != 1:  # type: ignore[attr-defined]
                    lost.append(item.run_id)
        return lost

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        exit_code: int | None,
        reason: str | None,
        progress: Progress | None = None,
        was: RunStatus = RunStatus.RUNNING,
        now: datetime | None = None,
    ) -> RunRecord | None:
        """Move a run from ``was`` to ``status``; None if it was no longer in ``was``."""
        now = utcnow() if now is None else now
        values: dict[str, Any] = {
            "status": status.value,
            "exit_code": exit_code,
            "reason": reason,
            "finished_at": now,
        }
        if progress is not None:
            values.update(
                line_count=progress.line_count,
                output_bytes=progress.output_bytes,
                tail=orjson.dumps(list(progress.tail)).decode(),
            )
        with self._sessions.begin() as session:
            done = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == was.value)
                .values(**values)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = session.get(Run, run_id)
            assert row is not None
            return _record(row)

    def fail_replica(self, replica: str, reason: str) -> list[RunRecord]:
        """Mark failed every run still recorded as running on ``replica`` (its restart)."""
        with self._sessions() as session:
            ids = session.scalars(
                select(Run.id).where(Run.replica == replica, Run.status == RunStatus.RUNNING.value)
            ).all()
        return self._fail_each(ids, reason, heartbeat_before=None)

    def fail_stale(self, heartbeat_before: datetime, reason_for: str) -> list[RunRecord]:
        """Mark failed the running runs whose replica's heartbeat is older than the cutoff.

        ``reason_for`` is a format string with ``{replica}``.
        """
        with self._sessions() as session:
            rows = session.execute(
                select(Run.id, Run.replica).where(
                    Run.status == RunStatus.RUNNING.value, Run.heartbeat_at < heartbeat_before
                )
            ).all()
        failed: list[RunRecord] = []
        for run_id, replica in rows:
            failed += self._fail_each(
                [run_id], reason_for.format(replica=replica), heartbeat_before=heartbeat_before
            )
        return failed

    def expire_queued(self, queued_before: datetime, reason: str) -> list[RunRecord]:
        """End with ``timeout`` the runs still queued since before the cutoff."""
        with self._sessions() as session:
            ids = session.scalars(
                select(Run.id).where(
                    Run.status == RunStatus.QUEUED.value, Run.created_at < queued_before
                )
            ).all()
        expired: list[RunRecord] = []
        for run_id in ids:
            record = self.finish(
                run_id, RunStatus.TIMEOUT, exit_code=None, reason=reason, was=RunStatus.QUEUED
            )
            if record is not None:
                expired.append(record)
        return expired

    def _fail_each(
        self, ids: Sequence[str], reason: str, heartbeat_before: datetime | None
    ) -> list[RunRecord]:
        failed: list[RunRecord] = []
        now = utcnow()
        for run_id in ids:
            with self._sessions.begin() as session:
                conditions = [Run.id == run_id, Run.status == RunStatus.RUNNING.value]
                if heartbeat_before is not None:
                    conditions.append(Run.heartbeat_at < heartbeat_before)
                done = session.execute(
                    update(Run)
                    .where(*conditions)
                    .values(status=RunStatus.FAILED.value, reason=reason, finished_at=now)
                )
                if done.rowcount == 1:  # type: ignore[attr-defined]
                    row = session.get(Run, run_id)
                    assert row is not None
                    failed.append(_record(row))
        return failed
