"""One run's child process under ``ChildRun``, without a broker: batching pace, stop
escalation, cancellation and a publisher that keeps failing (real child processes)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import orjson
import psutil

from shared.db.runs import RunStatus
from services.runner.manager import REPO_ROOT
from services.runner.output import Batch
from services.runner.process import ChildRun, Limits

ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO_ROOT, "PYTHONUNBUFFERED": "1"}


def _limits(**overrides: float) -> Limits:
    values: dict[str, float] = dict(
        max_wall_s=30, max_line_chars=1000, max_output_bytes=1 << 20, stop_grace_s=0.2,
        kill_grace_s=0.2, tail_lines=3, batch_lines=100, batch_bytes=1 << 16,
        batch_interval_s=0.05,
    )
    values.update(overrides)
    return Limits(**values)  # type: ignore[arg-type]


def _child(job: str, args: dict[str, object], limits: Limits,
           published: list[tuple[int, Batch]], fail: bool = False,
           on_dropped: Callable[[int], None] = lambda _n: None,
           first: asyncio.Event | None = None) -> ChildRun:
    async def publish(seq: int, batch: Batch) -> None:
        if fail:
            raise ConnectionError("broker away")
        published.append((seq, batch))
        if first is not None:
            first.set()

    argv = [sys.executable, "-m", "services.runner.child", f"services.runner.jobs.{job}:JOB",
            orjson.dumps(args).decode(), "{}"]
    return ChildRun("run-1", argv, ENV, REPO_ROOT, limits, publish, on_dropped=on_dropped)


async def test_a_slow_job_is_sent_in_few_batches_in_order() -> None:
    published: list[tuple[int, Batch]] = []
    child = _child("countdown", {"start": 30, "interval_s": 0.01},
                   _limits(batch_interval_s=0.2), published)
    outcome = await child.run()
    assert outcome.status is RunStatus.COMPLETED
    assert [seq for seq, _ in published] == list(range(len(published)))
    assert [line for _, b in published for line in b.lines] == [
        *map(str, range(30, 0, -1)), "liftoff"]
    assert len(published) < 10  # about 0.3 s of output at one batch per 0.2 s
    assert child.line_count == 31 and list(child.tail) == ["2", "1", "liftoff"]


async def test_stop_escalates_to_sigkill_for_a_job_ignoring_sigterm() -> None:
    published: list[tuple[int, Batch]] = []
    running = asyncio.Event()
    child = _child("misbehave", {"mode": "busy", "ignore_sigterm": True}, _limits(), published,
                   first=running)
    task = asyncio.create_task(child.run())
    await asyncio.wait_for(running.wait(), 10)  # the job printed its first line
    asked = time.monotonic()
    assert child.request_stop(RunStatus.STOPPED, "test")
    assert not child.request_stop(RunStatus.FAILED, "second")  # the first request wins
    outcome = await asyncio.wait_for(task, 5)
    assert outcome.status is RunStatus.STOPPED and outcome.exit_code == -9
    assert outcome.reason == "test"
    assert time.monotonic() - asked < 2


async def test_cancelling_the_supervisor_kills_the_job() -> None:
    published: list[tuple[int, Batch]] = []
    running = asyncio.Event()
    child = _child("misbehave", {"mode": "sleep"}, _limits(), published, first=running)
    task = asyncio.create_task(child.run())
    await asyncio.wait_for(running.wait(), 10)
    assert child.pid is not None
    process = psutil.Process(child.pid)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


async def test_batches_that_cannot_be_published_are_dropped_and_the_run_still_ends() -> None:
    published: list[tuple[int, Batch]] = []
    dropped: list[int] = []
    child = _child("lines", {"count": 50}, _limits(publish_retry_s=0.1), published, fail=True,
                   on_dropped=dropped.append)
    outcome = await asyncio.wait_for(child.run(), 10)
    assert outcome.status is RunStatus.COMPLETED
    assert published == [] and sum(dropped) == 50
