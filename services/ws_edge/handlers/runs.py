"""``/api/runs``: a user's recent runs, and one run's state and output tail.

The runner records runs in the ``runs`` table (``shared/db/runs.py``); the edge reads it
through ``RunStore`` so a client that reconnects can catch up on a run it started, and
shows it as docs/runner.md says: times in Unix seconds.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any, Final

from shared.db.runs import RunRecord, RunStore
from services.ws_edge.handlers.api import ApiHandler

RUN_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100


def summary(record: RunRecord) -> dict[str, Any]:
    """The run without its tail, as the HTTP API shows it."""
    return {
        "run_id": record.id,
        "owner": record.owner,
        "job": record.job,
        "args": record.args,
        "replica": record.replica,
        "status": record.status.value,
        "reason": record.reason,
        "exit_code": record.exit_code,
        "queued_at": _unix(record.created_at),
        "started_at": _unix(record.started_at),
        "finished_at": _unix(record.finished_at),
        "duration_s": round(record.duration_s, 3),
        "lines": record.line_count,
    }


def _unix(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class RunsHandler(ApiHandler):
    @property
    def runs(self) -> RunStore:
        runs = self.deps.runs
        assert runs is not None
        return runs

    def _int_argument(self, name: str, default: int, maximum: int) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if not raw.isdigit() or not 0 <= int(raw) <= maximum:
            self.fail(400, "bad_request", f"{name} must be an integer from 0 to {maximum}")
            return None
        return int(raw)


class RunListHandler(RunsHandler):
    """``GET /api/runs[?limit=N]``: the caller's most recent runs, newest first."""

    async def get(self) -> None:
        limit = self._int_argument("limit", DEFAULT_LIMIT, MAX_LIMIT)
        if limit is None:
            return
        records = await asyncio.get_running_loop().run_in_executor(
            self.deps.blocking, self.runs.recent, self.identity.user_id, limit
        )
        self.write_json({"runs": [summary(record) for record in records]})


class RunStatusHandler(RunsHandler):
    """``GET /api/runs/<run_id>[?tail=N]``: state and last lines; owner or admin, else 404."""

    async def get(self, run_id: str) -> None:
        tail = self._int_argument("tail", 10_000, 10_000)
        if tail is None:
            return
        record: RunRecord | None = None
        if RUN_ID.fullmatch(run_id):
            record = await asyncio.get_running_loop().run_in_executor(
                self.deps.blocking, self.runs.get, run_id
            )
        if record is None or not self.may_see(record.owner):
            self.fail(404, "not_found", f"no run {run_id[:128]!r}")
            return
        lines = record.tail[-tail:] if tail else []
        self.write_json({**summary(record), "tail": lines})
