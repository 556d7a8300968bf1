"""Excel export benchmark: Warren's build against plain openpyxl, same rows, same workbook.

    python -m bench.excel                              # 10k, 100k and 1M rows
    python -m bench.excel --rows 10000 100000 --pairs 5
    python -m bench.excel --subject openpyxl           # openpyxl against itself: the noise

Both variants write the ``sample`` report's rows in a fresh child of one ``forkserver``
that has this module (so openpyxl and the worker's code) preloaded:

- **warren**: what the worker does for a ``sample`` task: a work directory, ``run_build``
  (the build child writes the sheet with progress through the pipe that the event loop
  reads, and fsyncs it), then ``move_into_storage`` (rename, directory fsync) and the
  work directory removed;
- **openpyxl**: plain openpyxl, public write-only API only (``plain_sheet`` below; it does
  not use Warren's code), writing the same rows to the same workbook: the same header
  style, column widths, number and date formats, frozen header and autofilter. It reuses
  one formatted cell per column, the fastest way openpyxl's API allows (Warren does the
  same), so the difference between the two is what Warren adds: formula neutralisation,
  per-column conversion, progress, fsync and the move.

Before timing a size, one file of each variant is written and their sheet XML and
styles XML compared: they must be byte-identical.

Per run: **CPU s** is the child's user + system time (``getrusage`` in the child, at the
end) plus this process's own CPU time during the run (for Warren: reading progress,
moving the file); **wall s** is this process's clock from starting the child to the
result (for Warren: to the file in place); **peak RSS** is the child's ``ru_maxrss``.
Runs are made in back-to-back pairs, alternating which variant goes first: 9 pairs for
up to 10k rows, 5 up to 100k, 3 above (``--pairs`` sets one number for all). Two
overheads are printed: on the best runs (each variant's least CPU time; other load only
ever adds time, so the least disturbed run is closest to the true cost, as ``timeit``
reasons), and the median over the pairs of (warren / openpyxl - 1) with its range, which
shows the noise. The verdict uses the best runs. ``--subject openpyxl`` measures openpyxl
against itself the same way: the "overhead" it prints is the machine's noise floor. No
broker is involved: queueing a task costs a few milliseconds once, not per row.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import resource
import shutil
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any, Final

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Alignment, Font, PatternFill

from services.excel_worker.build import BuildJob
from services.excel_worker.files import move_into_storage, work_dir_name
from services.excel_worker.process import build_context, run_build, warm_up
from services.excel_worker.reports.sample import sample_rows

RSS_TARGET_MB: Final = 150.0
OVERHEAD_TARGET_PCT: Final = 10.0
COMPARED_PARTS: Final = ("xl/worksheets/sheet1.xml", "xl/styles.xml")


@dataclass(frozen=True, slots=True)
class Measure:
    cpu_s: float
    wall_s: float
    peak_rss_mb: float
    size: int


def plain_sheet(path: str, rows: Iterable[list[Any]], count: int) -> None:
    """The ``sample`` report written with plain openpyxl, as an application would."""
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("sample")
    for letter, width in zip("ABCDE", (10, 16, 14, 20, 10)):
        ws.column_dimensions[letter].width = width
    ws.freeze_panes = "A2"
    header = []
    for name in ("id", "name", "amount", "created", "active"):
        cell = WriteOnlyCell(ws, value=name)
        cell.font = Font(bold=True, color="FFFFFF")
        cell.fill = PatternFill("solid", fgColor="1F4E78")
        cell.alignment = Alignment(horizontal="center", vertical="center")
        header.append(cell)
    ws.append(header)
    amount, created = WriteOnlyCell(ws), WriteOnlyCell(ws)
    amount.number_format = "#,##0.00"
    created.number_format = "yyyy-mm-dd hh:mm:ss"
    for row_id, name, value, when, active in rows:
        amount.value, created.value = value, when
        ws.append([row_id, name, amount, created, active])
    ws.auto_filter.ref = f"A1:E{count + 1}"
    wb.save(path)


def _plain_child(path: str, rows: int, conn: Connection) -> None:
    plain_sheet(path, sample_rows(rows), rows)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send((usage.ru_utime + usage.ru_stime, usage.ru_maxrss))
    conn.close()


async def measure_plain(
    context: ForkServerContext, directory: Path, rows: int
) -> tuple[Measure, Path]:
    path = directory / f"openpyxl-{rows}.xlsx"
    receiver, sender = context.Pipe(duplex=False)
    loop = asyncio.get_running_loop()
    cpu, wall = time.process_time(), time.perf_counter()
    process = context.Process(target=_plain_child, args=(str(path), rows, sender))
    process.start()
    sender.close()
    child_cpu, rss_kb = await loop.run_in_executor(None, receiver.recv)
    await loop.run_in_executor(None, process.join)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    receiver.close()
    return Measure(child_cpu + cpu, wall, rss_kb / 1024, path.stat().st_size), path


async def measure_warren(
    context: ForkServerContext, directory: Path, rows: int
) -> tuple[Measure, Path]:
    task_id = f"bench{rows}"
    work, final = directory / work_dir_name(task_id), directory / f"warren-{rows}.xlsx"
    job = BuildJob(task_id=task_id, owner="bench", report="sample",
                   reference="services.excel_worker.reports.sample:REPORT",
                   params={"rows": rows, "title": None}, work_dir=str(work),
                   progress_interval_s=0.25)
    updates: list[int] = []
    cpu, wall = time.process_time(), time.perf_counter()
    work.mkdir()
    outcome = await run_build(context, job, lambda done, _total: updates.append(done), 3600.0)
    move_into_storage(job.output, final)
    shutil.rmtree(work)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert outcome.rows == rows and updates and updates[-1] == rows
    return Measure(outcome.cpu_s + cpu, wall, outcome.peak_rss_kb / 1024, outcome.size), final


def _digests(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        digests = []
        for part in COMPARED_PARTS:
            digest = hashlib.sha256()
            with archive.open(part) as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
            digests.append(digest.hexdigest())
        return digests


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f} %"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


SUBJECTS: Final[dict[str, Callable[..., Any]]] = {
    "warren": measure_warren, "openpyxl": measure_plain,
}


async def run_pairs(
    context: ForkServerContext, directory: Path, rows: int, pairs: int, subject: str
) -> dict[str, list[Measure]]:
    """``{"subject": [...], "baseline": [...]}``, one measure of each per pair."""
    variants = {"subject": SUBJECTS[subject], "baseline": measure_plain}
    runs: dict[str, list[Measure]] = {name: [] for name in variants}
    for pair in range(pairs):
        order = list(variants) if pair % 2 == 0 else list(reversed(variants))
        files = {}
        for name in order:
            (directory / name).mkdir(exist_ok=True)
            measure, files[name] = await variants[name](context, directory / name, rows)
            runs[name].append(measure)
        if pair == 0 and _digests(files["subject"]) != _digests(files["baseline"]):
            raise SystemExit(f"{rows} rows: the two variants did not write the same sheet")
        for path in files.values():
            path.unlink()
    return runs


def default_pairs(rows: int) -> int:
    """Cheap sizes get more pairs: a median of more pairs is steadier on a noisy machine."""
    return 9 if rows <= 10_000 else 5 if rows <= 100_000 else 3


async def main(sizes: list[int], pairs: int | None, subject: str) -> None:
    context = build_context()  # the worker's: openpyxl and the build code preloaded
    await warm_up(context)
    print(f"load average (1, 5, 15 min) at start: {_load()}", flush=True)
    header = ("| rows | variant | CPU s best | CPU s median | wall s median | rows/s (best) "
              "| peak RSS MB | file MB | CPU overhead, best runs "
              "| CPU overhead, median of pairs (range) | wall overhead, median of pairs |")
    lines = [header, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="warren-bench-excel-") as tmp:
        for rows in sizes:
            runs = await run_pairs(context, Path(tmp), rows, pairs or default_pairs(rows), subject)
            best = {v: min(m.cpu_s for m in measures) for v, measures in runs.items()}
            overheads = {}
            for clock in ("cpu_s", "wall_s"):
                ratios = sorted(getattr(s, clock) / getattr(b, clock)
                                for s, b in zip(runs["subject"], runs["baseline"]))
                overheads[clock] = (statistics.median(ratios), ratios[0], ratios[-1])
            names = {"subject": subject if subject == "warren" else "openpyxl (again)",
                     "baseline": "openpyxl"}
            best_ratio = best["subject"] / best["baseline"]
            for variant, measures in runs.items():
                cpu = statistics.median(m.cpu_s for m in measures)
                wall = statistics.median(m.wall_s for m in measures)
                rss = max(m.peak_rss_mb for m in measures)
                cells = ["", "", ""]
                if variant == "subject":
                    mid, low, high = overheads["cpu_s"]
                    cells = [_pct(best_ratio), f"{_pct(mid)} ({_pct(low)} … {_pct(high)})",
                             _pct(overheads["wall_s"][0])]
                lines.append(
                    f"| {rows:,} | {names[variant]} | {best[variant]:.2f} | {cpu:.2f} | "
                    f"{wall:.2f} | {rows / best[variant]:,.0f} | {rss:.1f} | "
                    f"{measures[0].size / 1e6:.1f} | {' | '.join(cells)} |"
                )
            cpu_overhead = (best_ratio - 1) * 100
            cpu_ok = cpu_overhead < OVERHEAD_TARGET_PCT
            rss = max(m.peak_rss_mb for m in runs["subject"])
            verdicts.append(
                f"- {rows:,} rows: {names['subject']} CPU overhead on the best runs "
                f"{cpu_overhead:+.1f} % (target < {OVERHEAD_TARGET_PCT:g} %: {_verdict(cpu_ok)}), "
                f"median of pairs {_pct(overheads['cpu_s'][0])}; peak RSS {rss:.1f} MB "
                f"(target < {RSS_TARGET_MB:g} MB: {_verdict(rss < RSS_TARGET_MB)})"
            )
            print(*lines[-2:], sep="\n", flush=True)
    print(f"\nload average (1, 5, 15 min) at end: {_load()}; pairs per size: "
          f"{', '.join(str(pairs or default_pairs(rows)) for rows in sizes)}; "
          "same sheet and styles XML checked\n")
    print("\n".join(lines))
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--pairs", type=int, help="back-to-back pairs per size (default: 9, 5, 3)")
    parser.add_argument("--subject", choices=sorted(SUBJECTS), default="warren",
                        help="what is compared with openpyxl (openpyxl: the noise floor)")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.pairs, args.subject))
