"""Handling one ``excel.create`` command: claim the task, build, store, notify, then ack.

The handler returns (ack) only once the file is in storage and the row says done, or
the row says failed and the owner's notification is stored. See docs/exports.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.orm import Session, sessionmaker

from shared.db.exports import FINAL_STATUSES, ExportRecord, ExportStore
from shared.db.notifications import NotificationStore, make_notification
from shared.messaging.broker import Publisher
from shared.messaging.envelope import Envelope, encode
from shared.messaging.work import Reject
from services.excel_worker.activity import activity_rows
from services.excel_worker.build import BuildJob
from services.excel_worker.metrics import ExcelMetrics
from services.excel_worker.notify import (
    RoutedPublisher,
    done_event,
    failed_event,
    progress_event,
)
from services.excel_worker.process import BuildFailed, BuildOutcome, run_build
from services.excel_worker.settings import ExcelSettings
from services.excel_worker.spec import ExportRequest, InvalidRequest, ReportKind, parse_request

log = logging.getLogger(__name__)

TASK_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")
MAX_STORED_PARAMS: Final = 1 << 20
T = TypeVar("T")


def stored_name(task_id: str) -> str:
    """The file's name in storage: chosen by the server, never by the user."""
    return f"{task_id}.xlsx"


def download_name(report: str, when: datetime) -> str:
    return f"warren-{report}-{when.strftime('%Y%m%d-%H%M%S')}.xlsx"


@dataclass(frozen=True, slots=True)
class WorkerDeps:
    settings: ExcelSettings
    metrics: ExcelMetrics
    exports: ExportStore
    notifications: NotificationStore
    sessions: sessionmaker[Session]
    publisher: Publisher
    routed: RoutedPublisher
    context: ForkServerContext
    blocking: Executor


class ExportWorker:
    def __init__(self, deps: WorkerDeps) -> None:
        self._deps = deps

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._deps.blocking, partial(fn, *args, **kwargs))

    async def handle(self, envelope: Envelope, message: AbstractIncomingMessage) -> None:
        deps = self._deps
        task_id, owner = envelope.id, envelope.sender.name
        if TASK_ID.fullmatch(task_id) is None:
            raise Reject(f"task id {task_id[:40]!r} is not a plain id")
        try:
            request = parse_request(envelope.data, deps.settings.limits)
        except InvalidRequest as exc:
            await self._refuse(envelope, exc)
            return
        record = await self._db(deps.exports.claim, task_id, owner, request.report.value, request.params)
        if record.owner != owner:
            raise Reject(f"task {task_id} belongs to another user")
        if record.status in FINAL_STATUSES:
            deps.metrics.tasks.labels("duplicate").inc()
            log.info("task already final; acked", extra={"task_id": task_id, "status": record.status.value})
            return
        deps.metrics.running.inc()
        try:
            await self._attempts(record, request)
        finally:
            deps.metrics.running.dec()

    async def _attempts(self, record: ExportRecord, request: ExportRequest) -> None:
        deps, settings = self._deps, self._deps.settings
        while True:
            if record.attempts > settings.max_attempts:
                await self._give_up(record, "retries_exhausted",
                                    f"gave up after {settings.max_attempts} attempts")
            try:
                await self._build_and_store(record, request)
                return
            except BuildFailed as exc:
                log.warning("build failed", extra={"task_id": record.id, "attempt": record.attempts,
                                                   "reason": str(exc)})
                if record.attempts >= settings.max_attempts:
                    await self._give_up(record, "build_failed", str(exc))
                deps.metrics.retries.inc()
                delay = min(settings.retry_backoff_max_s,
                            settings.retry_backoff_s * 2 ** (record.attempts - 1))
                await asyncio.sleep(delay)
                record = await self._db(
                    deps.exports.claim, record.id, record.owner, request.report.value, request.params
                )
                if record.status in FINAL_STATUSES:
                    return

    async def _give_up(self, record: ExportRecord, code: str, reason: str) -> None:
        """Mark failed, tell the owner, and dead-letter the command."""
        await self._fail(record.id, record.owner, code, reason)
        raise Reject(f"task {record.id}: {reason}")

    async def _refuse(self, envelope: Envelope, exc: InvalidRequest) -> None:
        """A request that can never be built: recorded as failed and acked (it is handled)."""
        data = envelope.data
        report = data.get("report") if isinstance(data.get("report"), str) else "?"
        raw = orjson.dumps(data.get("params", {}))
        params = data.get("params") if len(raw) <= MAX_STORED_PARAMS and isinstance(
            data.get("params"), dict) else {"omitted": True}
        record = await self._db(self._deps.exports.claim, envelope.id, envelope.sender.name,
                                str(report)[:32], params)
        if record.owner != envelope.sender.name or record.status in FINAL_STATUSES:
            return
        await self._fail(envelope.id, envelope.sender.name, exc.code, exc.message, "invalid")
        log.info("task refused", extra={"task_id": envelope.id, "code": exc.code})

    async def _fail(
        self, task_id: str, owner: str, code: str, message: str, outcome: str = "failed"
    ) -> None:
        event = failed_event(task_id, owner, code, message)
        note = make_notification(event.id, owner, event.type, encode(event))
        if await self._db(self._deps.exports.fail, task_id, code, message, note):
            self._deps.metrics.tasks.labels(outcome).inc()
            await self._announce(event)

    async def _build_and_store(self, record: ExportRecord, request: ExportRequest) -> None:
        deps, settings = self._deps, self._deps.settings
        prepared = None
        if request.report is ReportKind.ACTIVITY:
            prepared = await self._db(activity_rows, deps.sessions, deps.exports, record.owner,
                                      request.params)
        directory = settings.exports_dir
        temp = directory / f".{record.id}.{uuid.uuid4().hex[:8]}.part"
        job = BuildJob(
            task_id=record.id, report=request.report, params=request.params,
            prepared_rows=prepared, temp_path=str(temp),
            progress_interval_s=settings.progress_interval_s, row_delay_s=settings.row_delay_s,
        )
        started = time.monotonic()
        try:
            await self._db(directory.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise BuildFailed(f"storage directory unusable: {exc}") from exc
        reporter = _ProgressReporter(self, record, settings.progress_interval_s)
        try:
            try:
                outcome = await run_build(deps.context, job, reporter, settings.build_timeout_s)
            finally:
                await reporter.flush()  # no progress event may follow excel.done
            elapsed = time.monotonic() - started
            await self._store(record, request, temp, outcome)
        finally:
            await self._db(_unlink, temp)  # nothing left if stored; a dropped build's file
        deps.metrics.build_seconds.labels(request.report.value).observe(elapsed)
        log.info("export built", extra={"task_id": record.id, "rows": outcome.rows,
                                        "size": outcome.size, "seconds": round(elapsed, 3),
                                        "peak_rss_kb": outcome.peak_rss_kb})

    async def _store(
        self, record: ExportRecord, request: ExportRequest, temp: Path, outcome: BuildOutcome
    ) -> None:
        deps = self._deps
        final = deps.settings.exports_dir / stored_name(record.id)
        filename = download_name(request.report.value, datetime.now(timezone.utc))
        event = done_event(record.id, record.owner, filename, outcome.size, outcome.rows)
        note = make_notification(event.id, record.owner, event.type, encode(event))
        stored = await self._db(
            deps.exports.finish, record.id, file_name=final.name, download_name=filename,
            size=outcome.size, rows=outcome.rows, notification=note,
            store_file=partial(_move, temp, final),
        )
        if not stored:
            deps.metrics.tasks.labels("duplicate").inc()
            log.info("task finished elsewhere meanwhile; this build is dropped",
                     extra={"task_id": record.id})
            return
        deps.metrics.tasks.labels("done").inc()
        deps.metrics.rows.inc(outcome.rows)
        await self._announce(event)

    async def _announce(self, event: Envelope) -> None:
        """Publish a stored notification live; mark it delivered if the user was online."""
        deps = self._deps
        try:
            routed = await deps.routed.publish(event)
        except Exception:
            log.warning("live notification not published; it stays pending",
                        extra={"id": event.id}, exc_info=True)
            deps.metrics.notifications.labels("pending").inc()
            return
        deps.metrics.notifications.labels("routed" if routed else "pending").inc()
        if routed:
            await self._db(deps.notifications.mark_delivered, [event.id])

    async def _publish_progress(self, event: Envelope) -> None:
        try:
            await self._deps.publisher.publish_event(event)
        except Exception:
            log.debug("progress event not published", exc_info=True)


class _ProgressReporter:
    """Publishes progress at most every ``interval`` seconds, never queueing publishes."""

    def __init__(self, worker: ExportWorker, record: ExportRecord, interval: float) -> None:
        self._worker = worker
        self._record = record
        self._interval = interval
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def __call__(self, rows: int, total: int) -> None:
        now = time.monotonic()
        if self._task is not None and not self._task.done():
            return
        if now - self._last < self._interval and rows < total:
            return
        self._last = now
        event = progress_event(self._record.id, self._record.owner, rows, total)
        self._task = asyncio.create_task(self._worker._publish_progress(event))

    async def flush(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _move(temp: Path, final: Path) -> None:
    os.replace(temp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)

