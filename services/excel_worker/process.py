"""Running a build in a child process, off the event loop, with its messages handed back.

Builds run in fresh children of a ``forkserver`` that has openpyxl imported already, so
starting one costs milliseconds. The child's pipe is read by the event loop itself
(``loop.add_reader``); no thread and no Tornado or aio-pika object is involved. A
cancelled or timed-out build kills its child; the caller owns the build's work directory
and removes it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

from services.excel_worker.build import BuildJob, run_job


class BuildFailed(RuntimeError):
    """The build child reported an error, died, or ran out of time."""


class RowsRefused(ValueError):
    """The report's rows do not match its columns: no other attempt would do better."""


@dataclass(frozen=True, slots=True)
class BuildOutcome:
    rows: int
    size: int
    peak_rss_kb: int
    cpu_s: float  # the child's user + system CPU time


def build_context() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, ForkServerContext)
    context.set_forkserver_preload(["services.excel_worker.build"])
    return context


def _noop() -> None:
    return None


async def warm_up(context: ForkServerContext) -> None:
    """Start the fork server now rather than on the first task."""
    process = context.Process(target=_noop, daemon=True)
    process.start()
    await asyncio.get_running_loop().run_in_executor(None, process.join)


async def run_build(
    context: ForkServerContext,
    job: BuildJob,
    on_progress: Callable[[int, int | None], None],
    timeout: float,
) -> BuildOutcome:
    """Build ``job`` in a child; ``on_progress(rows, total)`` runs on the loop (``total``
    None while the report does not know it). :class:`RowsRefused` if the report's rows
    do not match its columns, :class:`BuildFailed` for any other failure."""
    loop = asyncio.get_running_loop()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=run_job, args=(job, sender), daemon=True,
                              name=f"excel-build-{job.task_id[:12]}")
    messages: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
    process.start()
    sender.close()
    loop.add_reader(receiver.fileno(), _read, receiver, messages)
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await messages.get()
                if message is None:
                    raise BuildFailed(f"build process exited with code {await _exit_code(process)}")
                if message[0] == "progress":
                    on_progress(message[1], message[2])
                elif message[0] == "invalid_row":
                    await _exit_code(process)
                    raise RowsRefused(str(message[1]))
                elif message[0] == "done":
                    await _exit_code(process)
                    _, rows, size, peak_rss_kb, cpu_s = message
                    return BuildOutcome(rows, size, peak_rss_kb, cpu_s)
                else:
                    await _exit_code(process)
                    raise BuildFailed(str(message[1]))
    except TimeoutError as exc:
        raise BuildFailed(f"build took longer than {timeout:g} s") from exc
    finally:
        loop.remove_reader(receiver.fileno())
        receiver.close()
        if process.is_alive():
            process.kill()
            await _exit_code(process)
        process.close()


def _read(receiver: Connection, messages: asyncio.Queue[tuple[Any, ...] | None]) -> None:
    # Called by the loop when the pipe is readable; the child's messages are small
    # (well under PIPE_BUF), so each one is complete once readable.
    try:
        while receiver.poll():
            messages.put_nowait(receiver.recv())
    except (EOFError, OSError):
        messages.put_nowait(None)
        asyncio.get_running_loop().remove_reader(receiver.fileno())


async def _exit_code(process: multiprocessing.process.BaseProcess) -> int | None:
    await asyncio.get_running_loop().run_in_executor(None, process.join, 10.0)
    return process.exitcode
