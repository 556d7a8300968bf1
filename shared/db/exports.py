"""Excel export tasks: one row per ``excel.create`` command, keyed by its envelope id.

The edge creates the row (``queued``) when a task comes over HTTP; the worker upserts it
when a task comes over the WebSocket. Status moves queued -> running -> done | failed,
and done -> expired when retention deletes the file. Blocking: run in an executor.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol, cast

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    CursorResult,
    DateTime,
    Engine,
    Integer,
    String,
    Text,
    Update,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from shared.db.models import Base, utcnow
from shared.db.notifications import Notification


log = logging.getLogger(__name__)

LOCK_NOT_AVAILABLE: Final = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait
HOLD_FILES: Final = 4096  # lock files of FileHold


class ExportStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


FINAL_STATUSES = frozenset({ExportStatus.DONE, ExportStatus.FAILED, ExportStatus.EXPIRED})


class ExportTask(Base):
    __tablename__ = "export_tasks"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    file_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    download_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


@dataclass(frozen=True, slots=True)
class ExportRecord:
    id: str
    owner: str
    kind: str
    params: dict[str, Any]
    status: ExportStatus
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expired_at: datetime | None
    file_name: str | None
    download_name: str | None
    size: int | None
    rows: int | None
    error_code: str | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """The public view of a task (no storage path)."""
        return {
            "task_id": self.id,
            "owner": self.owner,
            "report": self.kind,
            "status": self.status.value,
            "attempts": self.attempts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "expired_at": _iso(self.expired_at),
            "filename": self.download_name,
            "size": self.size,
            "rows": self.rows,
            "error": {"code": self.error_code, "message": self.error} if self.error_code else None,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _record(row: ExportTask) -> ExportRecord:
    params = orjson.loads(row.params) if row.params else {}
    return ExportRecord(
        id=row.id, owner=row.owner, kind=row.kind,
        params=params if isinstance(params, dict) else {},
        status=ExportStatus(row.status), attempts=row.attempts,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
        expired_at=row.expired_at, file_name=row.file_name, download_name=row.download_name,
        size=row.size, rows=row.rows, error_code=row.error_code, error=row.error,
    )


class ExportStore:
    """Blocking data access to ``export_tasks``; async callers run it in an executor."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(self, task_id: str, owner: str, kind: str, params: dict[str, Any]) -> ExportRecord:
        """Insert a queued task (the edge's ``POST /api/exports``); an existing row is kept."""
        try:
            with self._sessions.begin() as session:
                row = _new_row(task_id, owner, kind, params, ExportStatus.QUEUED)
                session.add(row)
                session.flush()
                return _record(row)
        except IntegrityError:
            found = self.get(task_id)
            assert found is not None
            return found

    def hold(self, task_id: str) -> TaskHold:
        """The task's hold (:class:`TaskHold`), not taken yet."""
        engine = self._sessions.kw["bind"]
        assert isinstance(engine, Engine)
        if engine.dialect.name == "postgresql":
            return AdvisoryHold(engine, task_id)
        database = engine.url.database
        if not database or database == ":memory:":
            return FreeHold()
        return FileHold(Path(f"{database}.holds"), task_id)

    def claim(self, task_id: str, owner: str, kind: str, params: dict[str, Any]) -> ExportRecord:
        """Upsert the row and, unless it is final, mark it running and count one more attempt.

        Call it holding the task (:meth:`hold`): then no live worker is building it, and
        the attempt counted is a new build, whose predecessor failed or died with its
        worker. A final row (done, failed, expired) is returned unchanged: the caller acks
        without building again. A row owned by someone else is returned unchanged too.
        """
        for _ in range(2):
            try:
                with self._sessions.begin() as session:
                    row = session.get(ExportTask, task_id, with_for_update=True)
                    if row is None:
                        row = _new_row(task_id, owner, kind, params, ExportStatus.QUEUED)
                        session.add(row)
                    if row.owner != owner or ExportStatus(row.status) in FINAL_STATUSES:
                        return _record(row)
                    row.status = ExportStatus.RUNNING.value
                    row.attempts = (row.attempts or 0) + 1
                    row.started_at = utcnow()
                    session.flush()
                    return _record(row)
            except IntegrityError:
                continue  # another worker inserted it first: read it again
        raise RuntimeError(f"could not claim export task {task_id!r}")

    def finish(
        self,
        task_id: str,
        *,
        file_name: str,
        download_name: str,
        size: int,
        rows: int,
        notification: Notification,
        store_file: Any,
    ) -> bool:
        """Mark the task done and record its notification, in one transaction.

        ``store_file()`` (the atomic rename into storage) runs while the row is locked
        and before the commit, so only the one caller that moves the row to done
        stores its file. Returns False if the task was already final.
        """
        with self._sessions.begin() as session:
            changed = _changed(
                session,
                update(ExportTask)
                .where(ExportTask.id == task_id, ExportTask.status.not_in(_final_values()))
                .values(
                    status=ExportStatus.DONE.value, finished_at=utcnow(), file_name=file_name,
                    download_name=download_name, size=size, rows=rows,
                    error_code=None, error=None,
                ),
            )
            if changed != 1:
                return False
            session.add(notification)
            session.flush()
            store_file()
            return True

    def fail(self, task_id: str, code: str, message: str, notification: Notification) -> bool:
        """Mark the task failed with a reason and record its notification; False if final."""
        with self._sessions.begin() as session:
            changed = _changed(
                session,
                update(ExportTask)
                .where(ExportTask.id == task_id, ExportTask.status.not_in(_final_values()))
                .values(
                    status=ExportStatus.FAILED.value, finished_at=utcnow(),
                    error_code=code, error=message[:2000],
                ),
            )
            if changed != 1:
                return False
            session.add(notification)
            return True

    def get(self, task_id: str) -> ExportRecord | None:
        with self._sessions() as session:
            row = session.get(ExportTask, task_id)
            return _record(row) if row is not None else None

    def list_for(self, owner: str, limit: int = 100) -> list[ExportRecord]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ExportTask)
                .where(ExportTask.owner == owner)
                .order_by(ExportTask.created_at.desc())
                .limit(limit)
            ).all()
            return [_record(r) for r in rows]

    def activity(
        self,
        owner: str,
        *,
        statuses: Sequence[str] = (),
        kinds: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int,
    ) -> list[ExportRecord]:
        """The owner's tasks, oldest first, filtered (the ``activity`` report)."""
        query = select(ExportTask).where(ExportTask.owner == owner)
        if statuses:
            query = query.where(ExportTask.status.in_(list(statuses)))
        if kinds:
            query = query.where(ExportTask.kind.in_(list(kinds)))
        if since is not None:
            query = query.where(ExportTask.created_at >= since)
        if until is not None:
            query = query.where(ExportTask.created_at < until)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(ExportTask.created_at).limit(limit)).all()
            return [_record(r) for r in rows]

    def expirable(self, finished_before: datetime, limit: int = 500) -> list[ExportRecord]:
        """Done tasks whose file is older than the retention."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ExportTask)
                .where(ExportTask.status == ExportStatus.DONE.value,
                       ExportTask.finished_at < finished_before)
                .limit(limit)
            ).all()
            return [_record(r) for r in rows]

    def mark_expired(self, task_id: str) -> bool:
        with self._sessions.begin() as session:
            return _changed(
                session,
                update(ExportTask)
                .where(ExportTask.id == task_id, ExportTask.status == ExportStatus.DONE.value)
                .values(status=ExportStatus.EXPIRED.value, expired_at=utcnow()),
            ) == 1

    def count_by_status(self) -> dict[str, int]:
        with self._sessions() as session:
            pairs = session.execute(
                select(ExportTask.status, func.count()).group_by(ExportTask.status)
            ).all()
            return {status: count for status, count in pairs}


class TaskHold(Protocol):
    """Says that a live worker handles a task, from before its claim until its result is
    stored, all its attempts included; a worker that dies lets it go with its process.

    So a worker that gets a delivery of a task can tell a builder that is alive, whose
    broker connection dropped so that the broker took the delivery back, from one that
    died: only the first still holds the task. Blocking; the methods run one at a time,
    so ``release`` may be called from another thread while ``take`` waits.
    """

    def take(self, wait_s: float = 0.0) -> bool:
        """Take the hold if nobody else has it, waiting up to ``wait_s`` seconds for it to
        be let go. True once taken; False if another worker kept it, or after release."""

    def release(self) -> None:
        """Let the hold go (if taken). Never raises."""


class AdvisoryHold:
    """A :class:`TaskHold` on PostgreSQL: a session-level advisory lock on the task id,
    taken on a connection of its own.

    PostgreSQL ends the lock with its connection, so it outlives neither the worker (the
    kernel closes a killed process's sockets) nor that connection. ``release`` closes
    the connection instead of unlocking and returning it to the pool, so no pooled
    connection ever carries a lock.
    """

    def __init__(self, engine: Engine, task_id: str) -> None:
        self._engine = engine
        self._key = _lock_key(task_id)
        self._guard = threading.Lock()
        self._connection: Connection | None = None
        self._released = False

    def take(self, wait_s: float = 0.0) -> bool:
        with self._guard:
            if self._released:
                return False
            try:
                if self._connection is None:
                    self._connection = self._engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT"
                    )
                return self._lock(self._connection, wait_s)
            except BaseException:
                self._drop()
                raise

    def release(self) -> None:
        # A broken connection has let the lock go already.
        with self._guard:
            self._released = True
            self._drop()

    def _lock(self, connection: Connection, wait_s: float) -> bool:
        key = literal(self._key, BigInteger)
        if wait_s <= 0:
            return bool(connection.scalar(select(func.pg_try_advisory_lock(key))))
        connection.execute(text(f"SET lock_timeout = {max(1, int(wait_s * 1000))}"))
        try:
            connection.execute(select(func.pg_advisory_lock(key)))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                connection.rollback()
                return False
            raise
        return True

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.invalidate()
            connection.close()
        except Exception:
            log.debug("closing a task hold's connection failed", exc_info=True)


class FileHold:
    """A :class:`TaskHold` on SQLite, where every worker runs on the database's host: an
    exclusive ``flock`` on a lock file beside the database. The kernel lets it go when
    the holder's process ends, however it ends.

    Tasks share :data:`HOLD_FILES` files by their key: files are never deleted (a
    process could lock a deleted file while another locks a new one), so their number
    is bounded. Two tasks on one file make one's first delivery wait for the other's
    build, nothing worse. ``flock`` cannot wait with a timeout, so ``take`` tries again
    with a capped backoff until ``wait_s`` has passed.
    """

    def __init__(self, directory: Path, task_id: str) -> None:
        self._path = directory / f"{_lock_key(task_id) % HOLD_FILES:04d}.lock"
        self._guard = threading.Lock()
        self._file: BinaryIO | None = None
        self._released = False

    def take(self, wait_s: float = 0.0) -> bool:
        deadline = time.monotonic() + wait_s
        delay = 0.01
        while True:
            with self._guard:
                if self._released:
                    return False
                if self._try():
                    return True
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(0.25, delay * 2)

    def release(self) -> None:
        with self._guard:
            self._released = True
            held, self._file = self._file, None
            if held is not None:
                held.close()  # closing the file lets the lock go

    def _try(self) -> bool:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "ab")  # noqa: SIM115 - kept open while held
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class FreeHold:
    """A :class:`TaskHold` that is always free: an in-memory SQLite database has one
    process."""

    def take(self, wait_s: float = 0.0) -> bool:
        return True

    def release(self) -> None:
        pass


def _lock_key(task_id: str) -> int:
    """The advisory lock key of a task: 64 bits of a hash of its id. Two ids sharing a
    key would make one task's delivery wait for the other's build, nothing worse."""
    digest = hashlib.blake2b(task_id.encode(), digest_size=8, person=b"warren.export").digest()
    return int.from_bytes(digest, "big", signed=True)


def _changed(session: Session, statement: Update) -> int:
    """How many rows an UPDATE changed (each state change here is a conditional update)."""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


def _final_values() -> list[str]:
    return [s.value for s in FINAL_STATUSES]


def _new_row(
    task_id: str, owner: str, kind: str, params: dict[str, Any], status: ExportStatus
) -> ExportTask:
    return ExportTask(
        id=task_id, owner=owner, kind=kind[:32], params=orjson.dumps(params).decode(),
        status=status.value, attempts=0, created_at=utcnow(),
    )
