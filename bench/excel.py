"""Excel export benchmark: Warren's build path against plain openpyxl, same rows, same run.

    python -m bench.excel                 # 10k, 100k and 1M rows
    python -m bench.excel --rows 10000 100000 --repeat 3

Each measurement runs in its own fresh child of one ``forkserver`` (openpyxl preloaded),
so peak RSS (the child's ``ru_maxrss``) is comparable between variants:

- **warren**: exactly what the worker does for a ``sample`` task: ``run_build`` starts a
  build child, which writes the styled sheet (header style, widths, number/date formats,
  frozen header, autofilter, formula neutralisation) to a temporary file, fsyncs it and
  streams progress over a pipe that the event loop reads; then the file is renamed into
  place. Time is measured in the parent, child start to rename.
- **openpyxl styled**: plain openpyxl write-only writing the same rows with the same
  formats, the usual way (a new ``WriteOnlyCell`` per formatted value), in a child.
- **openpyxl plain**: plain openpyxl write-only appending the same rows as bare values
  (no header style, no number formats), in a child: the floor.

Every variant runs ``--repeat`` times, interleaved; the table shows the fastest run (the
one least disturbed by other load on a shared machine) and the median.
Overhead % = (warren time / baseline time - 1) * 100 on the fastest runs; negative means
Warren was faster.
No broker is involved: queueing adds a constant few milliseconds per task, not per row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext
from pathlib import Path

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font, PatternFill

from services.excel_worker.build import BuildJob
from services.excel_worker.process import build_context, run_build, warm_up
from services.excel_worker.reports import SAMPLE_COLUMNS, sample_rows
from services.excel_worker.spec import ReportKind

RSS_TARGET_MB = 150.0
OVERHEAD_TARGET_PCT = 10.0


@dataclass(frozen=True, slots=True)
class Measure:
    seconds: float
    peak_rss_mb: float
    size: int


def _plain(path: str, rows: int, styled: bool) -> tuple[float, int, int]:
    """Child: write ``rows`` sample rows with plain openpyxl; return seconds, maxrss KB, size."""
    started = time.perf_counter()
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("sample")
    if styled:
        header = []
        for column in SAMPLE_COLUMNS:
            cell = WriteOnlyCell(ws, value=column.name)
            cell.font = Font(bold=True, color="FFFFFF")
            cell.fill = PatternFill("solid", fgColor="1F4E78")
            header.append(cell)
        ws.freeze_panes = "A2"
        ws.append(header)
        for values in sample_rows(rows):
            amount = WriteOnlyCell(ws, value=values[2])
            amount.number_format = "#,##0.00"
            created = WriteOnlyCell(ws, value=values[3])
            created.number_format = "yyyy-mm-dd hh:mm:ss"
            ws.append([values[0], values[1], amount, created, values[4]])
        ws.auto_filter.ref = f"A1:E{rows + 1}"
    else:
        ws.append([c.name for c in SAMPLE_COLUMNS])
        for values in sample_rows(rows):
            ws.append(values)
    wb.save(path)
    elapsed = time.perf_counter() - started
    return elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, os.path.getsize(path)


def _plain_child(path: str, rows: int, styled: bool, conn: object) -> None:
    conn.send(_plain(path, rows, styled))  # type: ignore[attr-defined]
    conn.close()  # type: ignore[attr-defined]


async def measure_plain(context: ForkServerContext, directory: Path, rows: int, styled: bool) -> Measure:
    receiver, sender = context.Pipe(duplex=False)
    path = directory / f"plain-{styled}-{rows}.xlsx"
    process = context.Process(target=_plain_child, args=(str(path), rows, styled, sender))
    process.start()
    sender.close()
    loop = asyncio.get_running_loop()
    seconds, rss_kb, size = await loop.run_in_executor(None, receiver.recv)
    await loop.run_in_executor(None, process.join)
    path.unlink()
    return Measure(seconds, rss_kb / 1024, size)


async def measure_warren(context: ForkServerContext, directory: Path, rows: int) -> Measure:
    temp, final = directory / f".warren-{rows}.part", directory / f"warren-{rows}.xlsx"
    job = BuildJob(task_id=f"bench{rows}", report=ReportKind.SAMPLE, params={"rows": rows, "title": None},
                   prepared_rows=None, temp_path=str(temp), progress_interval_s=0.25)
    updates: list[int] = []
    started = time.perf_counter()
    outcome = await run_build(context, job, lambda done, _total: updates.append(done), 3600.0)
    os.replace(temp, final)
    seconds = time.perf_counter() - started
    final.unlink()
    assert outcome.rows == rows and updates and updates[-1] == rows
    return Measure(seconds, outcome.peak_rss_kb / 1024, outcome.size)


def _pct(warren: float, base: float) -> str:
    return f"{(warren / base - 1) * 100:+.1f} %"


async def main(sizes: list[int], repeat: int) -> None:
    context = build_context()
    await warm_up(context)
    lines = [
        "| rows | variant | best s | median s | rows/s (best) | peak RSS MB | file MB | Warren overhead |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="warren-bench-excel-") as tmp:
        directory = Path(tmp)
        for rows in sizes:
            runs: dict[str, list[Measure]] = {"warren": [], "openpyxl styled": [], "openpyxl plain": []}
            for _ in range(repeat):  # interleaved, so drift in machine load hits all alike
                runs["openpyxl plain"].append(await measure_plain(context, directory, rows, False))
                runs["openpyxl styled"].append(await measure_plain(context, directory, rows, True))
                runs["warren"].append(await measure_warren(context, directory, rows))
            best = {k: min(m.seconds for m in v) for k, v in runs.items()}
            median = {k: statistics.median(m.seconds for m in v) for k, v in runs.items()}
            for name, measures in runs.items():
                rss = max(m.peak_rss_mb for m in measures)
                overhead = "" if name == "warren" else _pct(best["warren"], best[name])
                lines.append(
                    f"| {rows:,} | {name} | {best[name]:.2f} | {median[name]:.2f} | "
                    f"{rows / best[name]:,.0f} | {rss:.1f} | {measures[0].size / 1e6:.1f} | {overhead} |"
                )
            rss = max(m.peak_rss_mb for m in runs["warren"])
            verdicts.append(
                f"- {rows:,} rows: overhead vs styled openpyxl "
                f"{_pct(best['warren'], best['openpyxl styled'])}, vs plain "
                f"{_pct(best['warren'], best['openpyxl plain'])} (target < {OVERHEAD_TARGET_PCT:g} %); "
                f"Warren peak RSS {rss:.1f} MB (target < {RSS_TARGET_MB:g} MB: "
                f"{'PASS' if rss < RSS_TARGET_MB else 'FAIL'})"
            )
            print(lines[-3], lines[-2], lines[-1], sep="\n", flush=True)
    print()
    print("\n".join(lines))
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (median shown)")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.repeat))
