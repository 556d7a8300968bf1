"""Reading the ``activity`` report's rows: the owner's export tasks and, if present, runs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.db.exports import ExportStore
from shared.db.runs import RunStore


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _naive(value: datetime | None) -> datetime | None:
    """The UTC wall time, as a spreadsheet cell holds it (openpyxl refuses time zones)."""
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
        runs = RunStore(sessions)
        for run in runs.activity(owner, statuses=statuses, since=since, until=until, limit=limit):
            rows.append(["run", run.id, run.job, run.status.value, None,
                         _naive(run.created_at), _naive(run.finished_at), run.reason])
    rows.sort(key=lambda r: r[5] or datetime.min)
    return rows[:limit]
