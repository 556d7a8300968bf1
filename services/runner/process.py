"""One run's child process: start it, stream its output, enforce the limits, stop it.

The child runs in its own session (process group), so signals reach the job and any
processes it started. Stop escalates: ``stop`` on the child's stdin (the job's
``running()`` turns False), then SIGTERM to the group after ``stop_grace_s``, then
SIGKILL after ``kill_grace_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from shared.db.runs import Progress, RunStatus
from services.runner.output import Batch, Batcher, LineSplitter

log = logging.getLogger(__name__)

READ_CHUNK = 64 << 10
DRAIN_TIMEOUT_S = 2.0  # after the child exits, how long output may stall before we stop reading
DRAIN_MAX_S = 30.0  # and the most time spent reading after the child exits
PUBLISH_RETRY_S = 10.0

PublishBatch = Callable[[int, Batch], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_wall_s: float
    max_line_chars: int
    max_output_bytes: int
    stop_grace_s: float
    kill_grace_s: float
    tail_lines: int
    batch_lines: int
    batch_bytes: int
    batch_interval_s: float
    publish_retry_s: float = PUBLISH_RETRY_S  # how long one batch is retried before it is dropped


@dataclass(frozen=True, slots=True)
class Outcome:
    status: RunStatus
    exit_code: int | None
    reason: str | None


class ChildRun:
    def __init__(
        self,
        run_id: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        limits: Limits,
        publish: PublishBatch,
        on_lines: Callable[[str, int], None] = lambda _stream, _n: None,
        on_dropped: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self.run_id = run_id
        self._argv = list(argv)
        self._env = dict(env)
        self._cwd = cwd
        self._limits = limits
        self._publish = publish
        self._on_lines = on_lines
        self._on_dropped = on_dropped
        self._batcher = Batcher(limits.batch_lines, limits.batch_bytes)
        self._high_water = 4 * limits.batch_lines
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        self._stop: tuple[RunStatus, str | None] | None = None
        self._stop_asked = asyncio.Event()
        self._capped = False
        self.tail: deque[str] = deque(maxlen=limits.tail_lines)
        self.line_count = 0
        self.output_bytes = 0
        self.pid: int | None = None

    def progress(self) -> Progress:
        return Progress(self.run_id, self.line_count, self.output_bytes, tuple(self.tail))

    def request_stop(self, status: RunStatus, reason: str | None) -> bool:
        """Ask the run to end with ``status``; False if an earlier request already did."""
        if self._stop is not None:
            return False
        self._stop = (status, reason)
        self._stop_asked.set()
        return True

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    async def run(self) -> Outcome:
        """Start the child and supervise it until it and its output are done."""
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome(RunStatus.FAILED, None, f"could not start the job process: {exc}")
        self.pid = process.pid
        assert process.stdout is not None and process.stderr is not None
        pump = asyncio.create_task(self._pump())
        readers = [
            asyncio.create_task(self._read(process.stdout, "stdout")),
            asyncio.create_task(self._read(process.stderr, "stderr")),
        ]
        exited = asyncio.create_task(process.wait())
        asked = asyncio.create_task(self._stop_asked.wait())
        try:
            await asyncio.wait(
                {exited, asked}, timeout=self._limits.max_wall_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not exited.done():
                self.request_stop(
                    RunStatus.TIMEOUT, f"wall time of {self._limits.max_wall_s:g} s exceeded"
                )
                await self._escalate(process, exited)
        finally:
            asked.cancel()
            if not exited.done():  # cancelled: never leave a job behind
                _signal_group(process.pid, signal.SIGKILL)
                await asyncio.shield(exited)
            _signal_group(process.pid, signal.SIGKILL)  # whatever the job left in its group
            await self._finish_output(process, readers, pump)
        return self._outcome(exited.result())

    def _outcome(self, code: int) -> Outcome:
        if self._stop is not None:
            return Outcome(self._stop[0], code, self._stop[1])
        if code == 0:
            return Outcome(RunStatus.COMPLETED, 0, None)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return Outcome(RunStatus.FAILED, code, f"job killed by {name}")
        return Outcome(RunStatus.FAILED, code, f"job exited with code {code}")

    async def _escalate(self, process: asyncio.subprocess.Process, exited: asyncio.Task[int]) -> None:
        limits = self._limits
        if process.stdin is not None:
            try:
                process.stdin.write(b"stop\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        if await _within(exited, limits.stop_grace_s):
            return
        _signal_group(process.pid, signal.SIGTERM)
        if await _within(exited, limits.kill_grace_s):
            return
        _signal_group(process.pid, signal.SIGKILL)
        await exited

    async def _finish_output(
        self,
        process: asyncio.subprocess.Process,
        readers: list[asyncio.Task[None]],
        pump: asyncio.Task[None],
    ) -> None:
        # The job's group is dead; a pipe still open after that is held by a process that
        # left the group. Wait while output still flows, stop waiting once it stalls.
        give_up = time.monotonic() + DRAIN_MAX_S
        while True:
            seen = (self.line_count, len(self._batcher))
            _done, pending = await asyncio.wait(readers, timeout=DRAIN_TIMEOUT_S)
            stalled = (self.line_count, len(self._batcher)) == seen
            if not pending or stalled or time.monotonic() > give_up:
                break
        for task in pending:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if process.stdin is not None:
            process.stdin.close()
        self._closed = True
        self._changed.set()
        await pump

    async def _read(self, pipe: asyncio.StreamReader, stream: str) -> None:
        splitter = LineSplitter(self._limits.max_line_chars)
        while chunk := await pipe.read(READ_CHUNK):
            self._accept(stream, splitter.feed(chunk))
            if len(self._batcher) >= self._high_water:
                self._room.clear()
                await self._room.wait()
        self._accept(stream, splitter.close())

    def _accept(self, stream: str, lines: list[str]) -> None:
        if self._capped or not lines:
            return
        limit = self._limits.max_output_bytes
        kept = 0
        for line in lines:
            size = len(line.encode()) + 1
            if self.output_bytes + size > limit:
                self._capped = True
                break
            self.output_bytes += size
            kept += 1
        self._add(stream, lines[:kept])
        if self._capped:
            reason = f"output limit of {limit} bytes reached"
            self._add("stderr", [f"[runner] {reason}; the run is stopped"])
            self.request_stop(RunStatus.FAILED, reason)

    def _add(self, stream: str, lines: list[str]) -> None:
        if not lines:
            return
        self._batcher.add(stream, lines)
        self.tail.extend(lines)
        self.line_count += len(lines)
        self._on_lines(stream, len(lines))
        self._changed.set()

    async def _pump(self) -> None:
        """Publish batches in order: at most one per interval unless a full batch waits."""
        interval = self._limits.batch_interval_s
        seq = 0
        last = float("-inf")
        while True:
            while not self._batcher and not self._closed:
                self._changed.clear()
                await self._changed.wait()
            if not self._batcher:
                return
            deadline = last + interval
            while not self._batcher.full() and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._batcher.take()
            if len(self._batcher) < self._high_water:
                self._room.set()
            assert batch is not None
            if await self._publish_batch(seq, batch):
                seq += 1
            last = time.monotonic()

    async def _publish_batch(self, seq: int, batch: Batch) -> bool:
        delay = 0.05
        give_up = time.monotonic() + self._limits.publish_retry_s
        while True:
            try:
                await self._publish(seq, batch)
                return True
            except Exception:
                if time.monotonic() + delay > give_up:
                    log.exception("output batch dropped", extra={"run_id": self.run_id, "seq": seq})
                    self._on_dropped(len(batch.lines))
                    return False
                log.warning("output publish failed; retrying", extra={"run_id": self.run_id},
                            exc_info=True)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)


async def _within(task: asyncio.Task[int], seconds: float) -> bool:
    if seconds > 0:
        await asyncio.wait({task}, timeout=seconds)
    return task.done()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
