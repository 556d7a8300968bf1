"""The build child process: writes one export into its work directory and reports progress.

It talks to the worker only through a one-way pipe of small tuples:
``("progress", rows, total)`` at most every ``progress_interval_s``, then
``("done", rows, size, peak_rss_kb, cpu_s)`` or ``("error", message)``. It never touches
the broker, the database or the final file name: the worker moves the file into place
once it has recorded the task as done, and removes the work directory in every case.
openpyxl's own temporary file (the sheet's rows before they are zipped) goes into the
work directory too, so a killed build leaves nothing outside the storage volume.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shared.exports.requests import ReportKind
from services.excel_worker.files import OUTPUT_NAME
from services.excel_worker.progress import Throttle
from services.excel_worker.reports import columns_for, rows_for
from services.excel_worker.sheet import write_sheet


@dataclass(frozen=True, slots=True)
class BuildJob:
    task_id: str
    report: ReportKind
    params: dict[str, Any]
    prepared_rows: list[list[Any]] | None
    work_dir: str  # created by the worker, private to this build
    progress_interval_s: float
    row_delay_s: float = 0.0

    @property
    def output(self) -> Path:
        return Path(self.work_dir) / OUTPUT_NAME


class _ParentGone(Exception):
    pass


def _slowed(rows: Iterator[Sequence[Any]], delay: float) -> Iterator[Sequence[Any]]:
    for row in rows:
        time.sleep(delay)
        yield row


def run_job(job: BuildJob, conn: Connection) -> None:
    """Child entry point (multiprocessing target)."""
    tempfile.tempdir = job.work_dir  # this process builds one export, then exits
    try:
        rows_written = _build(job, conn)
        size = job.output.stat().st_size
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(("done", rows_written, size, usage.ru_maxrss, usage.ru_utime + usage.ru_stime))
    except (_ParentGone, BrokenPipeError):
        # Nobody else will remove it; another replica redoes the task.
        shutil.rmtree(job.work_dir, ignore_errors=True)
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the worker
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
    throttle = Throttle(job.progress_interval_s)

    def progress(count: int) -> None:
        if not throttle.ready(final=count >= total):
            return
        if os.getppid() != parent:
            raise _ParentGone()
        conn.send(("progress", count, total))

    if job.row_delay_s > 0:
        # Slowed builds (tests) report after every row, so a test can act at an exact row.
        def each_row(rows: Iterator[Sequence[Any]]) -> Iterator[Sequence[Any]]:
            for count, row in enumerate(rows, 1):
                yield row
                progress(count)

        rows = each_row(rows)
    progress(0)
    count = write_sheet(
        str(job.output), job.report.value, columns, rows,
        title=job.params.get("title"), on_row=progress,
    )
    with open(job.output, "rb+") as written:
        os.fsync(written.fileno())
    return count
