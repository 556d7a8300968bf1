"""The build child process: writes one export to a temporary file and reports progress.

It talks to the worker only through a one-way pipe of small tuples:
``("progress", rows, total)`` at most every ``progress_interval_s``, then
``("done", rows, size, peak_rss_kb)`` or ``("error", message)``. It never touches the
broker, the database or the final file name: the worker renames the file into place
once it has recorded the task as done.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from services.excel_worker.reports import columns_for, rows_for
from services.excel_worker.sheet import write_sheet
from services.excel_worker.spec import ReportKind


@dataclass(frozen=True, slots=True)
class BuildJob:
    task_id: str
    report: ReportKind
    params: dict[str, Any]
    prepared_rows: list[list[Any]] | None
    temp_path: str
    progress_interval_s: float
    row_delay_s: float = 0.0


class _ParentGone(Exception):
    pass


def _slowed(rows: Iterator[Sequence[Any]], delay: float) -> Iterator[Sequence[Any]]:
    for row in rows:
        time.sleep(delay)
        yield row


def run_job(job: BuildJob, conn: Connection) -> None:
    """Child entry point (multiprocessing target)."""
    try:
        rows_written = _build(job, conn)
        size = os.path.getsize(job.temp_path)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send(("done", rows_written, size, peak_kb))
    except (_ParentGone, BrokenPipeError):
        _remove(job.temp_path)  # the worker is gone; another replica redoes the task
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the worker
        _remove(job.temp_path)
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:1000]))
        except OSError:
            pass
    finally:
        conn.close()


def _build(job: BuildJob, conn: Connection) -> int:
    columns = columns_for(job.report, job.params)
    rows, total = rows_for(job.report, job.params, job.prepared_rows)
    if job.row_delay_s > 0:
        rows = _slowed(rows, job.row_delay_s)
    parent = os.getppid()
    last = 0.0

    def progress(count: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < job.progress_interval_s and count < total:
            return
        last = now
        if os.getppid() != parent:
            raise _ParentGone()
        conn.send(("progress", count, total))

    if job.row_delay_s > 0:
        # Slowed builds (tests) report every row so a test can act on an exact row.
        def each_row(rows: Iterator[Sequence[Any]]) -> Iterator[Sequence[Any]]:
            for count, row in enumerate(rows, 1):
                yield row
                progress(count)

        rows = each_row(rows)
    conn.send(("progress", 0, total))
    count = write_sheet(
        job.temp_path, job.report.value, columns, rows,
        title=job.params.get("title"), on_row=progress,
    )
    with open(job.temp_path, "rb+") as written:
        os.fsync(written.fileno())
    return count


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
