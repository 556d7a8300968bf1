"""Reading the ``activity`` report's rows: the owner's export tasks and, if present, runs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.exports import ExportStore
from shared.db.runs import Run


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _naive(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def activity_rows(
    sessions: sessionmaker[Session], store: ExportStore, owner: str, params: dict[str, Any]
) -> list[list[Any]]:
    """Blocking: the owner's tasks and runs, oldest first, at most ``params['limit']`` rows."""
    since, until, limit = _when(params["since"]), _when(params["until"]), params["limit"]
    statuses: list[str] = params["status"]
    rows: list[list[Any]] = []
    if "exports" in params["sources"]:
        for task in store.activity(owner, statuses=statuses, since=since, until=until, limit=limit):
            detail = task.error if task.error else (f"{task.rows} rows, {task.size} bytes"
                                                    if task.rows is not None else None)
            rows.append(["export", task.id, task.kind, task.status.value, task.attempts,
                         _naive(task.created_at), _naive(task.finished_at), detail])
    if "runs" in params["sources"]:
        rows.extend(_run_rows(sessions, owner, statuses, since, until, limit))
    rows.sort(key=lambda r: r[5] or datetime.min)
    return rows[:limit]


def _run_rows(
    sessions: sessionmaker[Session],
    owner: str,
    statuses: list[str],
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[list[Any]]:
    query = select(Run).where(Run.owner == owner)
    if statuses:
        query = query.where(Run.status.in_(statuses))
    if since is not None:
        query = query.where(Run.created_at >= since.timestamp())
    if until is not None:
        query = query.where(Run.created_at < until.timestamp())
    with sessions() as session:
        runs = session.scalars(query.order_by(Run.created_at).limit(limit)).all()
        return [
            ["run", r.id, r.job, r.status, None, _from_unix(r.created_at),
             _from_unix(r.finished_at), r.reason] for r in runs
        ]


def _from_unix(value: float | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, timezone.utc).replace(tzinfo=None)
