"""The events a task's owner receives: ``excel.progress``, ``excel.done``, ``excel.failed``.

``excel.done`` and ``excel.failed`` have stable envelope ids (``<task_id>-done``,
``<task_id>-failed``): they are also stored as notifications, and a client that sees one
twice (docs/exports.md, "Notifications") de-duplicates on the id.
"""

from __future__ import annotations

from typing import Final

from shared.messaging.envelope import Envelope
from shared.messaging.names import Address, Event

SENDER: Final = Address.service("excel_worker")


def download_url(task_id: str) -> str:
    return f"/api/exports/{task_id}/file"


def done_event(task_id: str, owner: str, filename: str, size: int, rows: int) -> Envelope:
    return Envelope(
        type=Event.EXCEL_DONE.value, to=Address.user(owner), sender=SENDER,
        id=f"{task_id}-done",
        data={"task_id": task_id, "filename": filename, "size": size, "rows": rows,
              "download_url": download_url(task_id)},
    )


def failed_event(task_id: str, owner: str, code: str, message: str) -> Envelope:
    return Envelope(
        type=Event.EXCEL_FAILED.value, to=Address.user(owner), sender=SENDER,
        id=f"{task_id}-failed", data={"task_id": task_id, "code": code, "message": message},
    )


def progress_event(task_id: str, owner: str, rows: int, total: int | None) -> Envelope:
    """``total`` and ``percent`` are None while the report does not know its row count."""
    percent = None if total is None else round(100.0 * rows / total, 1) if total else 100.0
    return Envelope(
        type=Event.EXCEL_PROGRESS.value, to=Address.user(owner), sender=SENDER,
        data={"task_id": task_id, "rows": rows, "total": total, "percent": percent},
    )
