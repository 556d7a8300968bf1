"""``activity``: the requester's own export tasks and runs, oldest first.

It reads Warren's own database (``ReportContext.warren_database_url``) from the build's
child process, through the stores that own those tables.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Final

from warren import Column, ColumnType, Param, Report, ReportContext, Table
from shared.db import make_engine, session_factory
from shared.db.exports import ExportStore
from shared.db.runs import RunStore

STATUSES: Final = ("queued", "running", "done", "failed", "expired",
                   "completed", "stopped", "timeout")
SOURCES: Final = ("exports", "runs")
COLUMNS: Final = (
    Column("source", ColumnType.STRING, 10),
    Column("id", ColumnType.STRING, 34),
    Column("name", ColumnType.STRING, 16),
    Column("status", ColumnType.STRING, 12),
    Column("attempts", ColumnType.INTEGER, 10),
    Column("created", ColumnType.DATETIME),
    Column("finished", ColumnType.DATETIME),
    Column("detail", ColumnType.STRING, 40),
)


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


def activity_rows(database_url: str, owner: str, params: dict[str, Any]) -> list[list[Any]]:
    """The owner's tasks and runs, oldest first, at most ``params['limit']`` rows: both
    sources are read in order and merged, so at most twice the limit is held."""
    since, until, limit = _when(params["since"]), _when(params["until"]), params["limit"]
    statuses: list[str] = params["status"]
    engine = make_engine(database_url)
    try:
        sessions = session_factory(engine)
        rows: list[list[Any]] = []
        if "exports" in params["sources"]:
            store = ExportStore(sessions)
            for task in store.activity(owner, statuses=statuses, since=since, until=until,
                                       limit=limit):
                detail = task.error if task.error else (
                    f"{task.rows} rows, {task.size} bytes" if task.rows is not None else None)
                rows.append(["export", task.id, task.kind, task.status.value, task.attempts,
                             _naive(task.created_at), _naive(task.finished_at), detail])
        if "runs" in params["sources"]:
            runs = RunStore(sessions)
            for run in runs.activity(owner, statuses=statuses, since=since, until=until,
                                     limit=limit):
                rows.append(["run", run.id, run.job, run.status.value, None,
                             _naive(run.created_at), _naive(run.finished_at), run.reason])
    finally:
        engine.dispose()
    rows.sort(key=lambda r: r[5] or datetime.min)
    return rows[:limit]


def build(params: dict[str, Any], context: ReportContext) -> Table:
    rows = activity_rows(context.warren_database_url, context.user_id, params)
    return Table(COLUMNS, iter(rows), total=len(rows))


REPORT: Final = Report(
    name="activity",
    description="Your own exports and runs, oldest first.",
    build=build,
    params={
        "status": Param("str_list", "only these statuses (default: all)", default=[],
                        choices=STATUSES),
        "sources": Param("str_list", "exports, runs or both", default=list(SOURCES),
                         choices=SOURCES),
        "since": Param("datetime", "created at or after (ISO date or date-time)", default=None),
        "until": Param("datetime", "created before (ISO date or date-time)", default=None),
        "limit": Param("int", "most rows", default=100_000, minimum=1, maximum=100_000),
    },
)
