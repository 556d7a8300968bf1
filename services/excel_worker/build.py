"""The build child process: writes one export into its work directory and reports progress.

It imports the one report it builds, by its reference (``module:attribute``, as the
worker's registry found it), runs the report's function and writes the rows as the
function's iterator yields them. It talks to the worker only through a one-way pipe of
small tuples: ``("progress", rows, total)`` at most every ``progress_interval_s``
(``total`` None while the report does not know it), then
``("done", rows, size, peak_rss_kb, cpu_s)``, ``("invalid_row", message)`` (a row that
does not match the columns: no other attempt would do better) or ``("error", message)``.
It never touches
the broker, the database or the final file name: the worker moves the file into place
once it has recorded the task as done, and removes the work directory in every case.
openpyxl's own temporary file (the sheet's rows before they are zipped) goes into the
work directory too, so a killed build leaves nothing outside the storage volume.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from warren.reports import ReportContext, Table
from services.excel_worker.files import OUTPUT_NAME
from services.excel_worker.progress import Throttle
from services.excel_worker.registry import load_report
from services.excel_worker.sheet import InvalidRow, write_sheet

MAX_SHEET_TITLE = 31  # characters Excel allows in a sheet's name


@dataclass(frozen=True, slots=True)
class BuildJob:
    task_id: str
    owner: str
    report: str  # its name
    reference: str  # module:attribute of the report, imported by the child
    params: dict[str, Any]
    work_dir: str  # created by the worker, private to this build
    progress_interval_s: float
    row_delay_s: float = 0.0
    import_paths: tuple[str, ...] = ()  # sys.path entries the report's module needs
    database_url: str = ""  # Warren's own, for ReportContext

    @property
    def output(self) -> Path:
        return Path(self.work_dir) / OUTPUT_NAME


class _ParentGone(Exception):
    pass


def _slowed(rows: Iterable[Sequence[Any]], delay: float) -> Iterator[Sequence[Any]]:
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
    except InvalidRow as exc:
        _tell(conn, ("invalid_row", str(exc)[:1000]))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the worker
        _tell(conn, ("error", f"{type(exc).__name__}: {exc}"[:1000]))
    finally:
        conn.close()


def _tell(conn: Connection, message: tuple[str, str]) -> None:
    try:
        conn.send(message)
    except OSError:
        pass


def _build(job: BuildJob, conn: Connection) -> int:
    for path in reversed(job.import_paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    report = load_report(job.reference)
    context = ReportContext(user_id=job.owner, task_id=job.task_id,
                            warren_database_url=job.database_url)
    table = report.build(job.params, context)
    if not isinstance(table, Table):
        raise TypeError(f"the report {report.name} returned a {type(table).__name__}, "
                        f"not a warren.Table")
    rows: Iterable[Sequence[Any]] = table.rows
    total = table.total
    if job.row_delay_s > 0:
        rows = _slowed(rows, job.row_delay_s)
    parent = os.getppid()
    throttle = Throttle(job.progress_interval_s)

    def progress(count: int) -> None:
        if not throttle.ready(final=total is not None and count >= total):
            return
        if os.getppid() != parent:
            raise _ParentGone()
        conn.send(("progress", count, total))

    if job.row_delay_s > 0:
        # Slowed builds (tests) report after every row, so a test can act at an exact row.
        def each_row(rows: Iterable[Sequence[Any]]) -> Iterator[Sequence[Any]]:
            for count, row in enumerate(rows, 1):
                yield row
                progress(count)

        rows = each_row(rows)
    progress(0)
    count = write_sheet(
        str(job.output), job.report[:MAX_SHEET_TITLE], table.columns, rows,
        title=job.params.get("title"), on_row=progress,
    )
    if total is None:  # now it is known: the last progress says 100 %
        total = count
        progress(count)
    with open(job.output, "rb+") as written:
        os.fsync(written.fileno())
    return count
