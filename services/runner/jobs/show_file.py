"""``show_file``: prints a text file from the runner's files directory.

The file is a ``path`` argument: users name files inside ``WARREN_RUNNER_FILES_DIR``
and nothing else (see docs/runner.md, "Arguments that name files").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warren.jobs import Job, JobContext, Param


def show_file(args: dict[str, Any], ctx: JobContext) -> None:
    path: Path = args["file"]
    limit: int = args["max_lines"]
    shown = 0
    with path.open(encoding="utf-8", errors="replace") as text:
        for line in text:
            if shown == limit:
                print(f"[first {limit} lines shown]")
                return
            if shown % 1000 == 0 and not ctx.running():
                print(f"stopped after {shown} lines")
                return
            print(line.rstrip("\r\n"))
            shown += 1


JOB = Job(
    name="show_file",
    description="Prints a text file from the runner's files directory, line by line.",
    run=show_file,
    params={
        "file": Param("path", "a file in the runner's files directory, e.g. 'notes/today.txt'"),
        "max_lines": Param("int", "most lines to print", default=10_000, minimum=1,
                           maximum=10_000_000),
    },
)
