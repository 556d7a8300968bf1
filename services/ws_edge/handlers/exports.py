"""``/api/exports``: ask for an Excel export, follow it, download it; and pending notifications.

The edge owns this HTTP API; the excel_worker owns the build. Both share the
``export_tasks`` table and the storage directory (``WARREN_EXPORTS_DIR``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from shared.db.exports import ExportRecord, ExportStatus
from shared.messaging import Address, Command, Envelope
from shared.messaging.broker import BrokerUnavailable, Unroutable
from shared.messaging.envelope import encode
from shared.db.notifications import make_notification
from services.excel_worker.notify import failed_event
from services.excel_worker.spec import InvalidRequest, parse_request
from services.ws_edge.deps import EdgeDeps, ExportsDeps
from services.ws_edge.handlers.api import ApiHandler

log = logging.getLogger(__name__)

XLSX_TYPE: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
TASK_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")
SAFE_FILENAME: Final = re.compile(r"[A-Za-z0-9._-]{1,200}")
CHUNK: Final = 64 * 1024
ADMIN_ROLE: Final = "admin"
LIST_LIMIT: Final = 100
T = TypeVar("T")


class ExportsHandler(ApiHandler):
    """Base: the exports part of the deps, blocking calls in the edge's executor."""

    @property
    def exports(self) -> ExportsDeps:
        exports = self.deps.exports
        assert exports is not None
        return exports

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.deps.blocking, fn, *args)

    async def visible_task(self, task_id: str) -> ExportRecord | None:
        """The task if the caller may see it; answers 400/404 itself and returns None otherwise.

        Someone else's task is 404, exactly like a missing one, so ids cannot be probed.
        """
        if TASK_ID.fullmatch(task_id) is None:
            self.fail(400, "invalid_task_id", "a task id is letters, digits, '_' and '-' only")
            return None
        record = await self.blocking(self.exports.store.get, task_id)
        if record is None or not (
            record.owner == self.identity.user_id or self.identity.has_role(ADMIN_ROLE)
        ):
            self.fail(404, "not_found", "no such export")
            return None
        return record


class ExportListHandler(ExportsHandler):
    async def get(self) -> None:
        records = await self.blocking(self.exports.store.list_for, self.identity.user_id, LIST_LIMIT)
        self.write_json({"exports": [_public(r) for r in records]})

    async def post(self) -> None:
        exports, me = self.exports, Address.user(self.identity.user_id)
        try:
            body = orjson.loads(self.request.body)
        except orjson.JSONDecodeError as exc:
            self.fail(400, "bad_request", f"body is not JSON: {exc}")
            return
        try:
            request = parse_request(body, exports.limits)
        except InvalidRequest as exc:
            self.fail(400, exc.code, exc.message)
            return
        data = {"report": request.report.value, "params": body.get("params", {})}
        envelope = Envelope(type=Command.EXCEL_CREATE.value, to=me, sender=me, data=data)
        await self.blocking(
            exports.store.create, envelope.id, me.name, request.report.value, request.params
        )
        try:
            await self.deps.publisher.publish_command(envelope)
        except (Unroutable, BrokerUnavailable) as exc:
            code = "no_service" if isinstance(exc, Unroutable) else "unavailable"
            message = "no excel worker is running" if code == "no_service" else "broker unavailable"
            event = failed_event(envelope.id, me.name, code, message)
            note = make_notification(event.id, me.name, event.type, encode(event))
            # Recorded as failed (and the notification delivered, as this answer says it).
            await self.blocking(exports.store.fail, envelope.id, code, message, note)
            await self.blocking(exports.notifications.mark_delivered, [event.id])
            self.fail(503, code, message)
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
            path = _stored_path(self.exports.directory, record.file_name)
            handle = await self.blocking(open, path, "rb")
        except (OSError, ValueError):
            log.warning("export file missing", extra={"task_id": record.id})
            self.fail(410, "file_missing", "the file is no longer in storage")
            return
        try:
            await self._stream(handle, record)
        finally:
            handle.close()

    async def _stream(self, handle: Any, record: ExportRecord) -> None:
        name = record.download_name or f"{record.id}.xlsx"
        if SAFE_FILENAME.fullmatch(name) is None:
            name = f"{record.id}.xlsx"
        self.set_header("Content-Type", XLSX_TYPE)
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, no-store")
        size = await self.blocking(lambda: Path(handle.name).stat().st_size)
        self.set_header("Content-Length", str(size))
        while chunk := await self.blocking(handle.read, CHUNK):
            self.write(chunk)
            await self.flush()
        await self.finish()


def _stored_path(directory: Path, file_name: str) -> Path:
    """The file inside the storage directory; a stored name is never a path."""
    if Path(file_name).name != file_name or file_name.startswith("."):
        raise ValueError(f"stored file name {file_name!r} is not a plain name")
    return directory / file_name


def _public(record: ExportRecord) -> dict[str, Any]:
    view = record.to_json()
    if record.status is ExportStatus.DONE:
        view["download_url"] = f"/api/exports/{record.id}/file"
    return view


async def deliver_pending(deps: EdgeDeps, socket: Any, user_id: str) -> None:
    """Right after ``welcome``: write the user's pending notifications, mark the written ones.

    ``socket.send_frame`` is the socket's own write; a frame it refuses stays pending.
    Failures are logged: the socket stays open and the rows stay pending for next time.
    """
    exports = deps.exports
    if exports is None:
        return
    loop = asyncio.get_running_loop()
    try:
        # One replay per user at a time in this edge: a socket opening while another one
        # of the same user replays sees the rows only after they are marked delivered.
        async with exports.replay_locks.hold(user_id):
            pending = await loop.run_in_executor(
                deps.blocking, exports.notifications.pending, user_id
            )
            delivered = [n.id for n in pending if socket.send_frame(deps.framer.text(n.body))]
            if delivered:
                await loop.run_in_executor(
                    deps.blocking, exports.notifications.mark_delivered, delivered
                )
    except Exception:
        log.warning("pending notifications not delivered", extra={"user": user_id}, exc_info=True)
