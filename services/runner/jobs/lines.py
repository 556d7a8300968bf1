"""``lines``: prints numbered lines, fast or at a set rate, through print, the raw file
descriptor, the C library's stdio (as C extensions do) or a grandchild process. For load
tests and benchmarks."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from warren.jobs import Job, JobContext, Param

_GRANDCHILD = (
    "import sys\n"
    "n, width, err = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == 'stderr'\n"
    "out = sys.stderr if err else sys.stdout\n"
    "for i in range(n): print(f'line {i}' + 'x' * width, file=out)\n"
)


def _c_stdio(stream: str) -> Callable[[bytes], None]:
    """``fputs`` to the C library's ``stdout`` or ``stderr``, as a C extension's printf."""
    libc = ctypes.CDLL(None)
    target = ctypes.c_void_p.in_dll(libc, stream)
    libc.fputs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    return lambda data: libc.fputs(data, target)


def _stamp() -> str:
    """Now in UTC as ISO 8601 with microseconds, e.g. ``2026-12-06T20:15:27.123456Z``:
    readable, and still precise enough to time a line's way to a client."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lines(args: dict[str, Any], ctx: JobContext) -> None:
    count: int = args["count"]
    pad = "x" * args["width"]
    stream: str = args["stream"]
    if args["via"] == "subprocess":
        subprocess.run(
            [sys.executable, "-c", _GRANDCHILD, str(count), str(args["width"]), stream], check=True
        )
        return
    rate: float = args["rate"]
    out = sys.stderr if stream == "stderr" else sys.stdout
    fd = out.fileno()
    c_write = _c_stdio(stream) if args["via"] == "c_stdio" else None
    started = time.monotonic()
    for i in range(count):
        if rate:
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0 and not ctx.wait(delay):
                return
            elif i % 1000 == 0 and not ctx.running():
                return
        text = f"line {i}" + (f" {_stamp()}" if args["stamp"] else "") + pad
        if args["via"] == "fd":
            os.write(fd, (text + "\n").encode())
        elif c_write is not None:
            c_write((text + "\n").encode())
        else:
            print(text, file=out)


JOB = Job(
    name="lines",
    description="Prints 'line <i>' count times (optionally padded, stamped or rate-limited).",
    run=lines,
    params={
        "count": Param("int", "lines to print", default=1000, minimum=0, maximum=10_000_000),
        "width": Param("int", "padding characters per line", default=0, minimum=0,
                       maximum=1_000_000),
        "rate": Param("float", "lines per second, 0 for as fast as possible", default=0.0,
                      minimum=0, maximum=1_000_000),
        "stream": Param("str", "where to print", default="stdout", choices=("stdout", "stderr")),
        "via": Param("str", "how to print", default="print",
                     choices=("print", "fd", "c_stdio", "subprocess")),
        "stamp": Param("bool", "append the time of each print (UTC, ISO 8601)", default=False),
    },
)
