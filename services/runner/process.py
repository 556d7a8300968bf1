"""One run's child process: start it, stream its output, enforce the limits, stop it.

The child runs in its own session (process group), so signals reach the job and any
processes it started. Stop escalates: ``stop`` on the child's stdin (the job's
``running()`` turns False), then SIGTERM to the group after ``stop_grace_s``, then
SIGKILL after ``kill_grace_s``. Once the child exits, whatever is left in its group is
killed.

A runner running as root starts the child as an unprivileged :class:`ChildUser`
(``WARREN_RUNNER_CHILD_USER``): its own user id and group, no supplementary groups,
and a working directory it owns.

The pipes are read through an :class:`asyncio.SubprocessProtocol` rather than
``asyncio.subprocess.Process``, whose ``wait()`` also waits for the pipes to close:
a process the job left behind would hold them open, and the run with them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from shared.db.runs import Progress, RunStatus
from shared.logging import CONNECTION_LOSS
from services.runner.output import Batch, Batcher, LineSplitter

log = logging.getLogger(__name__)

STREAMS: Final = {1: "stdout", 2: "stderr"}  # pipe fd -> stream name
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
class ChildUser:
    """Who a job process runs as when the runner runs as root."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> ChildUser:
        """A user name or a numeric id; :class:`KeyError` if the system does not know it."""
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: RunStatus
    exit_code: int | None
    reason: str | None


class _Pipes(asyncio.SubprocessProtocol):
    """The child's side of the loop: its output, its exit, and each pipe's end."""

    def __init__(self, on_data: Callable[[str, bytes], None]) -> None:
        self._on_data = on_data
        self._transport: asyncio.SubprocessTransport | None = None
        self.exited = asyncio.Event()
        self.closed = {fd: asyncio.Event() for fd in STREAMS}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self._on_data(STREAMS[fd], data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in self.closed:
            self.closed[fd].set()

    def process_exited(self) -> None:
        self.exited.set()

    def pause(self) -> None:
        """Stop reading: the pipes fill up and the job blocks in ``print``."""
        for fd in STREAMS:
            pipe = self._pipe(fd)
            if isinstance(pipe, asyncio.ReadTransport) and not pipe.is_closing():
                pipe.pause_reading()

    def resume(self) -> None:
        for fd in STREAMS:
            pipe = self._pipe(fd)
            if isinstance(pipe, asyncio.ReadTransport) and not pipe.is_closing():
                pipe.resume_reading()

    def ask_to_stop(self) -> None:
        """Write ``stop`` on the child's stdin (its ``running()`` turns False)."""
        pipe = self._pipe(0)
        if isinstance(pipe, asyncio.WriteTransport) and not pipe.is_closing():
            pipe.write(b"stop\n")

    def _pipe(self, fd: int) -> asyncio.BaseTransport | None:
        return self._transport.get_pipe_transport(fd) if self._transport is not None else None


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
        user: ChildUser | None = None,
    ) -> None:
        self.run_id = run_id
        self._user = user
        self._argv = list(argv)
        self._env = dict(env)
        self._cwd = cwd
        self._limits = limits
        self._publish = publish
        self._on_lines = on_lines
        self._on_dropped = on_dropped
        self._splitters = {s: LineSplitter(limits.max_line_chars) for s in STREAMS.values()}
        self._batcher = Batcher(limits.batch_lines, limits.batch_bytes)
        self._high_water = 4 * limits.batch_lines
        self._pipes = _Pipes(self._received)
        self._paused = False
        self._changed = asyncio.Event()
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
        loop = asyncio.get_running_loop()
        user = self._user
        try:
            if user is not None:
                os.chown(self._cwd, user.uid, user.gid)  # its scratch space, like a home
            transport, _ = await loop.subprocess_exec(
                lambda: self._pipes,
                *self._argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
                user=user.uid if user is not None else None,
                group=user.gid if user is not None else None,
                extra_groups=[] if user is not None else None,
            )
        except OSError as exc:
            who = f" as user {user.name}" if user is not None else ""
            return Outcome(RunStatus.FAILED, None, f"could not start the job process{who}: {exc}")
        pid = self.pid = transport.get_pid()
        pump = asyncio.create_task(self._pump())
        exited = asyncio.create_task(self._pipes.exited.wait())
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
                await self._escalate(pid, exited)
        finally:
            asked.cancel()
            if not exited.done():  # cancelled: never leave a job behind
                _signal_group(pid, signal.SIGKILL)
                await asyncio.shield(exited)
            _signal_group(pid, signal.SIGKILL)  # whatever the job left in its group
            await self._finish_output(pump)
            transport.close()
        code = transport.get_returncode()
        assert code is not None
        return self._outcome(code)

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

    async def _escalate(self, pid: int, exited: asyncio.Task[bool]) -> None:
        limits = self._limits
        self._pipes.ask_to_stop()
        if await _within(exited, limits.stop_grace_s):
            return
        _signal_group(pid, signal.SIGTERM)
        if await _within(exited, limits.kill_grace_s):
            return
        _signal_group(pid, signal.SIGKILL)
        await exited

    async def _finish_output(self, pump: asyncio.Task[None]) -> None:
        # The job's group is dead; a pipe still open after that is held by a process that
        # left the group. Wait while output still flows, stop waiting once it stalls.
        closed = [asyncio.create_task(event.wait()) for event in self._pipes.closed.values()]
        give_up = time.monotonic() + DRAIN_MAX_S
        while True:
            seen = (self.line_count, len(self._batcher))
            _done, pending = await asyncio.wait(closed, timeout=DRAIN_TIMEOUT_S)
            stalled = (self.line_count, len(self._batcher)) == seen
            if not pending or stalled or time.monotonic() > give_up:
                break
        for task in closed:
            task.cancel()
        for stream, splitter in self._splitters.items():
            self._accept(stream, splitter.close())  # an unfinished last line
        self._closed = True
        self._changed.set()
        await pump

    def _received(self, stream: str, data: bytes) -> None:
        if self._closed:  # after a stalled drain: nothing is published any more
            return
        self._accept(stream, self._splitters[stream].feed(data))
        if len(self._batcher) >= self._high_water and not self._paused:
            self._paused = True
            self._pipes.pause()

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
            if self._paused and len(self._batcher) < self._high_water:
                self._paused = False
                self._pipes.resume()
            assert batch is not None
            if await self._publish_batch(seq, batch):
                seq += 1
            last = time.monotonic()

    async def _publish_batch(self, seq: int, batch: Batch) -> bool:
        delay = 0.05
        give_up = time.monotonic() + self._limits.publish_retry_s
        retried = False
        while True:
            try:
                await self._publish(seq, batch)
                return True
            except Exception as exc:
                # The broker being away is expected and documented (runner.md, "Batching"):
                # a warning, without traceback (shared/logging.py). Anything else is a fault.
                expected = isinstance(exc, CONNECTION_LOSS)
                if time.monotonic() + delay > give_up:
                    log.log(logging.WARNING if expected else logging.ERROR, "output batch dropped",
                            extra={"run_id": self.run_id, "seq": seq}, exc_info=True)
                    self._on_dropped(len(batch.lines))
                    return False
                # Once per batch: the retries of one outage would otherwise fill the log.
                log.log(logging.DEBUG if retried else logging.WARNING,
                        "output publish failed; retrying", extra={"run_id": self.run_id},
                        exc_info=True)
                retried = True
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)


async def _within(task: asyncio.Task[bool], seconds: float) -> bool:
    if seconds > 0:
        await asyncio.wait({task}, timeout=seconds)
    return task.done()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
