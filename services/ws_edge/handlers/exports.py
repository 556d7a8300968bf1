"""``/api/exports``: ask for an Excel export, follow it, download it; and pending notifications.

The edge owns this HTTP API; the excel_worker owns the build. Both share the
``export_tasks`` table, the storage directory (``WARREN_EXPORTS_DIR``) and the rules in
``shared.exports``. The edge checks a request against the reports' descriptions
(:func:`report_descriptions`), never against report code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import orjson
from tornado.iostream import StreamClosedError

from shared.db.exports import ExportRecord, ExportStatus
from shared.db.notifications import make_notification
from shared.exports.events import download_url, failed_event
from shared.auth import Identity
from shared.exports.requests import (
    ExportRequest,
    InvalidRequest,
    RequestForbidden,
    validate_request,
)
from shared.exports.storage import is_task_id, stored_path
from shared.messaging import Address, Command, Envelope
from shared.messaging.broker import Unroutable
from shared.messaging.envelope import encode
from services.ws_edge.deps import EdgeDeps, ExportsDeps
from services.ws_edge.errors import FrameError, describe
from services.ws_edge.handlers.api import ApiHandler
from services.ws_edge.policy import PolicyDenied
from services.excel_worker.reports import BUILT_IN_REPORTS

log = logging.getLogger(__name__)

XLSX_TYPE: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
SAFE_FILENAME: Final = re.compile(r"[A-Za-z0-9._-]{1,200}")
CHUNK: Final = 64 * 1024
LIST_LIMIT: Final = 100
NO_WORKER: Final = "no excel worker is running"
T = TypeVar("T")


async def _blocking(deps: EdgeDeps, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(deps.blocking, fn, *args)


def _exports(deps: EdgeDeps) -> ExportsDeps:
    exports = deps.exports
    assert exports is not None
    return exports


def report_descriptions(deps: EdgeDeps) -> Sequence[Mapping[str, Any]]:
    """The reports requests are checked against, as ``Report.describe()`` gives them:
    those the running workers announce in the catalogue (an installed package's too, with
    the workers' limits), and Warren's built-in ones that no worker announces now,
    described from their declarations with this deployment's limits (the edge reads the
    same ``WARREN_EXCEL_MAX_*`` as the worker). So a request for a built-in report with no
    worker running is still checked, then refused with ``no_service``.
    """
    maxima = _exports(deps).limits.maxima()
    described: dict[str, Mapping[str, Any]] = {
        report.name: report.with_limits(maxima.get(report.name, {})).describe()
        for report in BUILT_IN_REPORTS
    }
    described.update((r["name"], r) for r in deps.commands.view.listing().reports)
    return list(described.values())


def check_request(deps: EdgeDeps, identity: Identity, data: object) -> ExportRequest:
    """The request checked against its report's schema and roles; :class:`InvalidRequest`
    (:class:`RequestForbidden` for the roles) saying what is wrong."""
    return validate_request(report_descriptions(deps), data, roles=identity.roles,
                            admin_role=deps.settings.auth.admin_role)


def _not_queued(exc: Exception) -> tuple[int, str, str]:
    """Status, code and message for a command that could not be queued (the error table's)."""
    spec = describe(exc)
    if isinstance(exc, Unroutable):
        return spec.status, spec.code, NO_WORKER
    if spec.code == "internal":
        return spec.status, spec.code, "internal error"
    return spec.status, spec.code, spec.message or str(exc) or spec.code


async def submit_export(
    deps: EdgeDeps, envelope: Envelope, kind: str, params: dict[str, Any]
) -> None:
    """Record the task as queued, then publish its ``excel.create`` command.

    If the command cannot be queued, the task is recorded as failed with that reason
    (its notification counts as delivered: the caller answers with the error) and the
    exception goes on to the caller's error table.
    """
    exports, owner = _exports(deps), envelope.sender.name
    await _blocking(deps, exports.store.create, envelope.id, owner, kind, params)
    try:
        await deps.publisher.publish_command(envelope)
    except Exception as exc:
        _, code, message = _not_queued(exc)
        event = failed_event(envelope.id, owner, code, message)
        note = make_notification(event.id, owner, event.type, encode(event))
        await _blocking(deps, exports.store.fail, envelope.id, code, message, note)
        await _blocking(deps, exports.notifications.mark_delivered, [event.id])
        raise


async def submit_from_socket(deps: EdgeDeps, envelope: Envelope, identity: Identity) -> None:
    """``excel.create`` from a WebSocket client: checked, then recorded as queued at once,
    so that ``GET /api/exports/<id>`` knows the task before a worker takes it.

    A request that does not fit its report's schema is refused here, before anything is
    recorded: the socket's error table turns :class:`FrameError` into an ``error`` frame
    with the request's code (``unknown_report``, ``invalid_params``) and
    :class:`PolicyDenied` into ``forbidden``.
    """
    try:
        request = check_request(deps, identity, envelope.data)
    except RequestForbidden as exc:
        raise PolicyDenied(exc.message) from None
    except InvalidRequest as exc:
        raise FrameError(exc.code, exc.message) from None
    await submit_export(deps, envelope, request.report, request.params)


class ExportsHandler(ApiHandler):
    """Base: the exports part of the deps, blocking calls in the edge's executor."""

    @property
    def exports(self) -> ExportsDeps:
        return _exports(self.deps)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await _blocking(self.deps, fn, *args)

    async def visible_task(self, task_id: str) -> ExportRecord | None:
        """The task if the caller may see it; answers 400/404 itself and returns None otherwise.

        Someone else's task is 404, exactly like a missing one, so ids cannot be probed.
        """
        if not is_task_id(task_id):
            self.fail(400, "invalid_task_id", "a task id is letters, digits, '_' and '-' only")
            return None
        record = await self.blocking(self.exports.store.get, task_id)
        if record is None or not self.may_see(record.owner):
            self.fail(404, "not_found", "no such export")
            return None
        return record


class ExportListHandler(ExportsHandler):
    async def get(self) -> None:
        records = await self.blocking(
            self.exports.store.list_for, self.identity.user_id, LIST_LIMIT
        )
        self.write_json({"exports": [_public(r) for r in records]})

    async def post(self) -> None:
        me = Address.user(self.identity.user_id)
        try:
            body = orjson.loads(self.request.body)
        except orjson.JSONDecodeError as exc:
            self.fail(400, "bad_request", f"body is not JSON: {exc}")
            return
        try:
            request = check_request(self.deps, self.identity, body)
        except InvalidRequest as exc:
            self.fail(403 if isinstance(exc, RequestForbidden) else 400, exc.code, exc.message)
            return
        data = {"report": request.report, "params": body.get("params", {})}
        envelope = Envelope(type=Command.EXCEL_CREATE.value, to=me, sender=me, data=data)
        try:
            await submit_export(self.deps, envelope, request.report, request.params)
        except Exception as exc:
            status, code, message = _not_queued(exc)
            if code == "internal":
                log.exception("export not submitted", extra={"task_id": envelope.id})
            self.fail(status, code, message)
            return
        self.set_header("Location", f"/api/exports/{envelope.id}")
        self.write_json({"task_id": envelope.id, "status": ExportStatus.QUEUED.value}, status=202)


class ExportStatusHandler(ExportsHandler):
    async def get(self, task_id: str) -> None:
        record = await self.visible_task(task_id)
        if record is not None:
            self.write_json(_public(record))


class ExportFileHandler(ExportsHandler):
    async def get(self, task_id: str) -> None:
        record = await self.visible_task(task_id)
        if record is None:
            return
        if record.status is ExportStatus.EXPIRED:
            self.fail(410, "expired", f"the file expired at {record.expired_at}")
            return
        if record.status is not ExportStatus.DONE or not record.file_name:
            self.fail(409, "not_ready", f"the export is {record.status.value}")
            return
        try:
            path = stored_path(self.exports.directory, record.file_name)
            handle = await self.blocking(_open_binary, path)
        except (OSError, ValueError):
            log.warning("export file missing", extra={"task_id": record.id})
            self.fail(410, "file_missing", "the file is no longer in storage")
            return
        try:
            await self._stream(handle, record)
        finally:
            handle.close()

    async def _stream(self, handle: IO[bytes], record: ExportRecord) -> None:
        name = record.download_name or f"{record.id}.xlsx"
        if SAFE_FILENAME.fullmatch(name) is None:
            name = f"{record.id}.xlsx"
        self.set_header("Content-Type", XLSX_TYPE)
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, no-store")
        # The open file's own size: retention may unlink the name meanwhile.
        size = os.fstat(handle.fileno()).st_size
        self.set_header("Content-Length", str(size))
        sent = 0
        try:
            while chunk := await self.blocking(handle.read, CHUNK):
                self.write(chunk)
                await self.flush()
                sent += len(chunk)
        except StreamClosedError:
            # A client going away mid-download (a cancelled save, a lost network) is no
            # error of the edge's; Tornado finishes the request after this returns.
            self.deps.metrics.downloads_client_closed.inc()
            log.info("export download closed by the client",
                     extra={"task_id": record.id, "sent": sent, "size": size})
            return
        self.deps.metrics.downloads_complete.inc()
        try:
            await self.finish()
        except StreamClosedError:
            pass  # many clients close as soon as they hold the last byte


def _open_binary(path: Path) -> IO[bytes]:
    return path.open("rb")


def _public(record: ExportRecord) -> dict[str, Any]:
    view = record.to_json()
    if record.status is ExportStatus.DONE:
        view["download_url"] = download_url(record.id)
    return view


async def deliver_pending(deps: EdgeDeps, socket: Any, user_id: str) -> None:
    """Right after ``welcome``: write the user's pending notifications, mark the written ones.

    ``socket.send_frame`` is the socket's own write; a frame it refuses stays pending.
    Failures are logged: the socket stays open and the rows stay pending for next time.
    """
    exports = deps.exports
    if exports is None:
        return
    try:
        # One replay per user at a time in this edge: a socket opening while another one
        # of the same user replays sees the rows only after they are marked delivered.
        async with exports.replay_locks.hold(user_id):
            pending = await exports.pending.get(user_id)
            delivered = [n.id for n in pending if socket.send_frame(deps.framer.text(n.body))]
            if delivered:
                await _blocking(deps, exports.notifications.mark_delivered, delivered)
    except Exception:
        log.warning("pending notifications not delivered", extra={"user": user_id}, exc_info=True)
