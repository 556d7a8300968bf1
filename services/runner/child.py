"""The child process of one run: ``python -m services.runner.child <job> <args> <context>``.

``job`` is the job's reference, ``module:attribute`` (services/runner/registry.py): the
child imports that one module. ``args`` and ``context`` are JSON objects; ``context``
may name the job (``job``), which the reference must resolve to.

The parent asks for a cooperative stop by writing ``stop`` on stdin (``running()``
turns False). If stdin reaches end of file the parent is gone: the job is told to stop
and, after ``orphan_grace_s``, the whole process group is killed, so no run outlives
its runner.

The runner starts it with ``PYTHONUNBUFFERED=1``, which makes CPython unbuffer the C
library's stdio as well as its own streams: what C extensions print with ``printf``
reaches the runner as it is printed, not in 4 KiB blocks or at exit.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import orjson

from services.runner.registry import load_job
from warren.jobs import ArgsError, JobContext

EXIT_BAD_INPUT = 64
EXIT_FAILED = 1


def _watch_stdin(stop: threading.Event, orphan_grace_s: float) -> None:
    # Raw reads on fd 0: a buffered sys.stdin held by a daemon thread breaks shutdown.
    while chunk := os.read(0, 256):
        if b"stop" in chunk:
            stop.set()
    # End of file: the runner closed the pipe or died.
    stop.set()
    threading.Event().wait(orphan_grace_s)
    if os.getpgid(0) == os.getpid():  # the runner made us a group leader: take the group
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m services.runner.child MODULE:ATTRIBUTE ARGS_JSON CONTEXT_JSON",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        job = load_job(argv[1])
    except Exception:  # the job's package changed or broke since the runner started
        print(f"cannot load the job {argv[1]}:", file=sys.stderr)
        traceback.print_exc()
        return EXIT_FAILED
    try:
        context: dict[str, Any] = orjson.loads(argv[3])
        if context.get("job", job.name) != job.name:
            print(f"{argv[1]} is the job {job.name!r} now, not {context['job']!r}", file=sys.stderr)
            return EXIT_BAD_INPUT
        files_dir = Path(context["files_dir"]) if context.get("files_dir") else None
        # Checked again here, as the job's user: the files may have changed since.
        args = job.located(job.validate(orjson.loads(argv[2]), files_dir), files_dir)
    except (ArgsError, orjson.JSONDecodeError) as exc:
        print(f"bad arguments: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_stdin, args=(stop, float(context.get("orphan_grace_s", 1.0))), daemon=True
    )
    watcher.start()
    ctx = JobContext(stop_event=stop, http_base_url=str(context.get("http_base_url", "")))
    try:
        result = job.run(args, ctx)
        if inspect.isawaitable(result):
            asyncio.run(_await(result))
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


async def _await(awaitable: Any) -> None:
    await awaitable


if __name__ == "__main__":
    sys.exit(main(sys.argv))
