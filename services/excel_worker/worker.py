"""Handling one ``excel.create`` command: hold and claim the task, build, store, notify, then ack.

The handler returns (ack) only once the file is in storage and the row says done, or
the row says failed and the owner's notification is stored. A task is built by one
handler at a time: a second delivery of a task this process handles waits for that
handler's outcome, and one of a task another live worker holds waits for its hold (an
attempt is counted only for a new build). See docs/exports.md, "Attempts".
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any, Final, TypeVar

from aio_pika.abc import AbstractIncomingMessage

from shared.db.exports import FINAL_STATUSES, ExportRecord, ExportStore, TaskHold
from shared.db.notifications import NotificationStore, make_notification
from shared.exports.events import done_event, failed_event, progress_event
from shared.exports.requests import ExportRequest, InvalidRequest, as_refused, parse_request
from shared.exports.storage import is_task_id, stored_name
from shared.messaging.broker import Publisher
from shared.messaging.envelope import Envelope, encode
from shared.messaging.work import Reject
from services.excel_worker.build import BuildJob
from services.excel_worker.files import move_into_storage, work_dir_name
from services.excel_worker.metrics import ExcelMetrics
from services.excel_worker.notify import RoutedPublisher
from services.excel_worker.process import BuildFailed, BuildOutcome, RowsRefused, run_build
from services.excel_worker.progress import Throttle
from services.excel_worker.registry import ReportRegistry
from services.excel_worker.settings import ExcelSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# One wait for a hold that another worker has. The waits run on threads of their own,
# not the database threads; between them a stopping worker gets its thread back.
HOLD_WAIT_S: Final = 2.0


def download_name(report: str, when: datetime) -> str:
    return f"warren-{report}-{when.strftime('%Y%m%d-%H%M%S')}.xlsx"


@dataclass(frozen=True, slots=True)
class WorkerDeps:
    settings: ExcelSettings
    reports: ReportRegistry
    metrics: ExcelMetrics
    exports: ExportStore
    notifications: NotificationStore
    publisher: Publisher
    routed: RoutedPublisher
    context: ForkServerContext
    blocking: Executor


@dataclass(frozen=True, slots=True)
class _InHand:
    """A task this process handles now, and how its handling ends."""

    owner: str
    outcome: asyncio.Future[None]


class ExportWorker:
    def __init__(self, deps: WorkerDeps) -> None:
        self._deps = deps
        # The tasks this process handles now, by id. After a broker connection loss the
        # broker takes a delivery back while its build goes on here, and may deliver it
        # here again: that delivery waits for the build instead of starting another.
        self._in_hand: dict[str, _InHand] = {}

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._deps.blocking, partial(fn, *args, **kwargs))

    async def handle(self, envelope: Envelope, message: AbstractIncomingMessage) -> None:
        deps = self._deps
        task_id, owner = envelope.id, envelope.sender.name
        if not is_task_id(task_id):
            raise Reject(f"task id {task_id[:40]!r} is not a plain id")
        try:
            request = parse_request(deps.reports, envelope.data)
        except InvalidRequest as exc:
            await self._refuse(envelope, exc)
            return
        in_hand = self._in_hand.get(task_id)
        if in_hand is not None:
            if in_hand.owner != owner:
                raise Reject(f"task {task_id} belongs to another user")
            await self._attach(task_id, in_hand)
            return
        in_hand = _InHand(owner, asyncio.get_running_loop().create_future())
        self._in_hand[task_id] = in_hand
        try:
            await self._hold_and_build(task_id, owner, request)
        except BaseException as exc:
            _resolve(in_hand.outcome, exc)
            raise
        else:
            _resolve(in_hand.outcome, None)
        finally:
            del self._in_hand[task_id]

    async def _attach(self, task_id: str, in_hand: _InHand) -> None:
        """Settle this delivery as the handler of the same task already running here
        settles its own (whose delivery is void if the broker gave this one)."""
        log.info("task redelivered while it is handled here; this delivery waits for it",
                 extra={"task_id": task_id})
        try:
            await asyncio.shield(in_hand.outcome)
        except asyncio.CancelledError:
            if not in_hand.outcome.cancelled():
                raise  # this handler is cancelled
            raise RuntimeError(f"the handling of task {task_id} was stopped") from None

    async def _hold_and_build(self, task_id: str, owner: str, request: ExportRequest) -> None:
        """Hold the task, then claim it and build it unless it is final. A hold another
        live worker has is waited for: it is building the task, and ends with that build."""
        deps = self._deps
        hold = deps.exports.hold(task_id)
        try:
            if not await self._db(hold.take):
                await self._wait_for(hold, task_id)
            record = await self._db(
                deps.exports.claim, task_id, owner, request.report, request.params
            )
            if record.owner != owner:
                raise Reject(f"task {task_id} belongs to another user")
            if record.status in FINAL_STATUSES:
                deps.metrics.tasks.labels("duplicate").inc()
                log.info("task already final; acked",
                         extra={"task_id": task_id, "status": record.status.value})
                return
            await self._attempts(record, request)
        finally:
            await self._db(hold.release)

    async def _wait_for(self, hold: TaskHold, task_id: str) -> None:
        """Take the hold once the worker that has it lets it go: it finished the task, or died."""
        log.info("task held by a live worker elsewhere; this delivery waits for it",
                 extra={"task_id": task_id})
        loop = asyncio.get_running_loop()
        taken = False
        while not taken:
            taken = await loop.run_in_executor(None, hold.take, HOLD_WAIT_S)

    async def _attempts(self, record: ExportRecord, request: ExportRequest) -> None:
        deps, settings = self._deps, self._deps.settings
        while True:
            if record.attempts > settings.max_attempts:
                await self._give_up(record, "retries_exhausted",
                                    f"gave up after {settings.max_attempts} attempts")
            try:
                await self._build_and_store(record, request)
                return
            except RowsRefused as exc:
                # The report's own fault, the same on every attempt: the task fails at
                # once. Acked like a bad request: a replay could only find it failed.
                log.warning("report rows do not match its columns",
                            extra={"task_id": record.id, "report": request.report,
                                   "reason": str(exc)})
                await self._fail(record.id, record.owner, "invalid_row", str(exc))
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
                record = await self._db(deps.exports.claim, record.id, record.owner,
                                        request.report, request.params)
                if record.status in FINAL_STATUSES:
                    return

    async def _give_up(self, record: ExportRecord, code: str, reason: str) -> None:
        """Mark failed, tell the owner, and dead-letter the command."""
        await self._fail(record.id, record.owner, code, reason)
        raise Reject(f"task {record.id}: {reason}")

    async def _refuse(self, envelope: Envelope, exc: InvalidRequest) -> None:
        """A request that can never be built: recorded as failed and acked (it is handled)."""
        owner = envelope.sender.name
        kind, params = as_refused(envelope.data)
        record = await self._db(self._deps.exports.claim, envelope.id, owner, kind, params)
        if record.owner != owner or record.status in FINAL_STATUSES:
            return
        await self._fail(envelope.id, owner, exc.code, exc.message, "invalid")
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
        work = settings.exports_dir / work_dir_name(record.id)
        try:
            await self._db(work.mkdir, parents=True)
        except OSError as exc:
            raise BuildFailed(f"storage directory unusable: {exc}") from exc
        job = BuildJob(
            task_id=record.id, owner=record.owner, report=request.report,
            reference=deps.reports.reference(request.report), params=request.params,
            work_dir=str(work), progress_interval_s=settings.progress_interval_s,
            row_delay_s=settings.row_delay_s, import_paths=deps.reports.import_paths(),
            database_url=settings.common.database_url,
        )
        started = time.monotonic()
        reporter = _ProgressReporter(self, record, settings.progress_interval_s)
        try:
            try:
                # Builds in progress, as documented: not the backoff between attempts, nor
                # the announcement after the file is stored.
                with deps.metrics.running.track_inprogress():
                    outcome = await run_build(deps.context, job, reporter, settings.build_timeout_s)
            finally:
                await reporter.flush()  # no progress event may follow excel.done
            elapsed = time.monotonic() - started
            done = await self._store(record, request, job.output, outcome)
        finally:
            # Empty once the file is stored; else a failed, cancelled or dropped build's files.
            await self._db(shutil.rmtree, work, ignore_errors=True)
        if done is None:
            return
        deps.metrics.build_seconds.labels(request.report).observe(elapsed)
        log.info("export built", extra={"task_id": record.id, "rows": outcome.rows,
                                        "size": outcome.size, "seconds": round(elapsed, 3),
                                        "cpu_s": round(outcome.cpu_s, 3),
                                        "peak_rss_kb": outcome.peak_rss_kb})
        await self._announce(done)

    async def _store(
        self, record: ExportRecord, request: ExportRequest, built: Path, outcome: BuildOutcome
    ) -> Envelope | None:
        """Move the file into place and mark the task done, in one transaction; return the
        done event to announce, or None if the task was finished elsewhere meanwhile."""
        deps = self._deps
        final = deps.settings.exports_dir / stored_name(record.id)
        filename = download_name(request.report, datetime.now(timezone.utc))
        event = done_event(record.id, record.owner, filename, outcome.size, outcome.rows)
        note = make_notification(event.id, record.owner, event.type, encode(event))
        stored = await self._db(
            deps.exports.finish, record.id, file_name=final.name, download_name=filename,
            size=outcome.size, rows=outcome.rows, notification=note,
            store_file=partial(move_into_storage, built, final),
        )
        if not stored:
            deps.metrics.tasks.labels("duplicate").inc()
            log.info("task finished elsewhere meanwhile; this build is dropped",
                     extra={"task_id": record.id})
            return None
        deps.metrics.tasks.labels("done").inc()
        deps.metrics.rows.inc(outcome.rows)
        return event

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
        log.info("notification settled", extra={"id": event.id, "live": routed})

    async def _publish_progress(self, event: Envelope) -> None:
        try:
            await self._deps.publisher.publish_event(event)
        except Exception:
            log.debug("progress event not published", exc_info=True)


def _resolve(outcome: asyncio.Future[None], failure: BaseException | None) -> None:
    if outcome.done():
        return
    if failure is None:
        outcome.set_result(None)
    elif isinstance(failure, asyncio.CancelledError):
        outcome.cancel()
    else:
        outcome.set_exception(failure)
        outcome.exception()  # usually no redelivery waits for it: mark the exception seen


class _ProgressReporter:
    """Publishes progress at most every ``interval`` seconds, never queueing publishes."""

    def __init__(self, worker: ExportWorker, record: ExportRecord, interval: float) -> None:
        self._worker = worker
        self._record = record
        self._throttle = Throttle(interval)
        self._task: asyncio.Task[None] | None = None

    def __call__(self, rows: int, total: int | None) -> None:
        if self._task is not None and not self._task.done():
            return
        if not self._throttle.ready(final=total is not None and rows >= total):
            return
        event = progress_event(self._record.id, self._record.owner, rows, total)
        self._task = asyncio.create_task(self._worker._publish_progress(event))

    async def flush(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
