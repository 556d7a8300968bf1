"""What the system recorded, read straight from PostgreSQL and the exports directory.

A fault test asks the ledger whether durable work was lost or done twice: every export
task a row, a final status, one stored file and one notification; every run an end.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.support.up import WarrenUp

_BUILT_LINE = r"^(excel-\d+)\s+\|.*\bexport built\b.*\btask_id="  # a worker's log line
BUILT = re.compile(_BUILT_LINE + r"(\S+)")
LOG_LAG_S = 30.0  # the longest wait for a done task's "export built" line


@dataclass(frozen=True, slots=True)
class ExportAudit:
    """Each task's fate; ``lost`` and ``duplicated`` must be empty for durable work."""

    status: dict[str, str | None]  # task id -> status in export_tasks (None: no row)
    notifications: dict[str, list[str]]  # task id -> notification ids stored
    files: list[str]  # stored files in the exports directory
    builds: Counter[str]  # task id -> "export built" log lines (files stored)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)

    def report(self) -> str:
        return (f"lost={self.lost} duplicated={self.duplicated} status={self.status} "
                f"notifications={self.notifications} files={self.files} builds={dict(self.builds)}")


class Ledger:
    def __init__(self, database_url: str, exports_dir: Path) -> None:
        self._engine = create_engine(database_url)
        self.exports_dir = exports_dir

    def close(self) -> None:
        self._engine.dispose()

    def rows(self, query: str, **params: Any) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(query), params)]

    def export_status(self) -> dict[str, str]:
        rows = self.rows("SELECT id, status FROM export_tasks")
        return {row["id"]: row["status"] for row in rows}

    def all_final(self, task_ids: Iterable[str]) -> bool:
        status = self.export_status()
        return all(status.get(task) in {"done", "failed"} for task in task_ids)

    def run(self, run_id: str) -> dict[str, Any] | None:
        found = self.rows("SELECT * FROM runs WHERE id = :id", id=run_id)
        return found[0] if found else None

    def stored_files(self) -> list[str]:
        if not self.exports_dir.exists():
            return []
        return sorted(path.name for path in self.exports_dir.glob("*.xlsx"))

    async def build_log(self, task_ids: Iterable[str], up: WarrenUp) -> list[str]:
        """``warren up``'s output lines once they hold the ``export built`` line of each of
        ``task_ids`` that is done, or after ``LOG_LAG_S`` (the audit then tells which is
        missing). A worker logs that line after marking its task done and before it
        publishes ``excel.done``, but the line reaches the test through two pipes (the
        worker's, then ``warren up``'s) and the event through the broker and an edge: a
        test that has heard every ``excel.done`` can still be ahead of the lines."""
        status = self.export_status()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOG_LAG_S
        for task in (task for task in task_ids if status.get(task) == "done"):
            line = rf"{_BUILT_LINE}{re.escape(task)}\b"
            try:
                await asyncio.to_thread(up.wait_for, line, max(0.0, deadline - loop.time()))
            except AssertionError:
                break
        return up.output().splitlines()

    def audit_exports(self, task_ids: Iterable[str], log_lines: Iterable[str]) -> ExportAudit:
        """Exactly once: a ``done`` row, one stored file, one ``-done`` notification and
        one successful build per task; anything less is lost, anything more duplicated."""
        tasks = list(task_ids)
        status = self.export_status()
        notes: dict[str, list[str]] = {task: [] for task in tasks}
        for row in self.rows("SELECT id FROM notifications"):
            task, _, _suffix = row["id"].rpartition("-")
            if task in notes:
                notes[task].append(row["id"])
        files = self.stored_files()
        builds = Counter(
            match[2] for match in map(BUILT.search, log_lines) if match and match[2] in notes
        )
        audit = ExportAudit({task: status.get(task) for task in tasks}, notes, files, builds)
        for task in tasks:
            stored = f"{task}.xlsx" in files
            done = status.get(task) == "done" and stored and notes[task] == [f"{task}-done"]
            if not done or builds[task] == 0:
                audit.lost.append(task)
            if builds[task] > 1 or len(notes[task]) > 1:
                audit.duplicated.append(task)
        return audit
