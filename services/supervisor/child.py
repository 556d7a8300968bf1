"""One supervised OS process: start it, relay its output, wait until it is ready, stop it.

Each child runs in a process group of its own, so a Ctrl-C in the terminal reaches only
the supervisor, which then stops the children in order. A supervisor that dies without
stopping them (SIGKILL, a crash) takes them along: each child gets SIGTERM when its parent
dies (Linux's parent-death signal, set by util-linux's ``setpriv`` before the child's
program starts), and stops as it would on any SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial

import httpx

from services.supervisor.output import Output
from services.supervisor.plan import ChildSpec

LINE_LIMIT = 1 << 20  # longest output line read whole; longer ones arrive in pieces
TAIL_LINES = 30  # kept to explain a child that dies
PROBE_TIMEOUT_S = 2.0
FIRST_PROBE_GAP_S = 0.05
MAX_PROBE_GAP_S = 0.5
OUTPUT_DRAIN_S = 2.0  # after the exit, for the last lines still in the pipe
SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


class ChildFailed(RuntimeError):
    """A child exited, or did not get ready in time; the message says which and why."""


def with_parent_death_signal(argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` run so that the child gets SIGTERM when the supervisor dies; unchanged
    where there is no ``setpriv`` (the children then outlive a killed supervisor)."""
    if SETPRIV is None:
        return argv
    return (SETPRIV, "--pdeathsig", "TERM", "--", *argv)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Child:
    def __init__(self, spec: ChildSpec, base_env: Mapping[str, str], output: Output) -> None:
        self.spec = spec
        self._env = {**base_env, **spec.env}
        self._output = output
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.killed = False  # it had to be SIGKILLed
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._exited: asyncio.Task[int] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def exited(self) -> asyncio.Task[int]:
        """Completes with the exit code (negative: the signal) when the process ends."""
        assert self._exited is not None, "not started"
        return self._exited

    @property
    def started(self) -> bool:
        return self._exited is not None

    @property
    def running(self) -> bool:
        return self._exited is not None and not self._exited.done()

    async def start(self) -> None:
        spec = self.spec
        self._process = await asyncio.create_subprocess_exec(
            *with_parent_death_signal(spec.argv),
            env=self._env,
            cwd=spec.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            pass_fds=spec.pass_fds,
            process_group=0,
            limit=LINE_LIMIT,
        )
        for fd in spec.pass_fds:
            os.close(fd)  # the child has its own copy now
        self._pump = asyncio.create_task(self._relay_output(), name=f"{spec.name}-output")
        self._exited = asyncio.create_task(self._process.wait(), name=f"{spec.name}-exit")

    async def _relay_output(self) -> None:
        log_file = self.spec.log_file
        if log_file is None:
            await self._copy_output(partial(self._output.child, self.name, self.spec.kind))
            return
        with log_file.open("a", encoding="utf-8") as sink:

            def append(line: str) -> None:
                sink.write(line + "\n")
                sink.flush()

            await self._copy_output(append)

    async def _copy_output(self, write: Callable[[str], None]) -> None:
        assert self._process is not None and self._process.stdout is not None
        stream = self._process.stdout
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # the end, maybe without a newline
                raw = exc.partial
            except asyncio.LimitOverrunError as exc:  # a very long line: relayed in pieces
                raw = await stream.read(exc.consumed or LINE_LIMIT)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.tail.append(line)
            write(line)

    async def wait_ready(self, http: httpx.AsyncClient, timeout: float) -> None:
        """Probe the readiness URL until it answers 200; fail if the child exits first."""
        gap = FIRST_PROBE_GAP_S
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if await self._probe(http):
                        return
                    # Between probes, wait on the child's exit: a crash is seen at once.
                    done, _ = await asyncio.wait({self.exited}, timeout=gap)
                    if done:
                        raise ChildFailed(
                            f"{self.name} exited with {describe_exit(self.exited.result())} "
                            "before it was ready"
                        )
                    gap = min(gap * 2, MAX_PROBE_GAP_S)
        except TimeoutError:
            raise ChildFailed(
                f"{self.name} was not ready within {timeout:g} s ({self.spec.ready_url})"
            ) from None

    async def _probe(self, http: httpx.AsyncClient) -> bool:
        try:
            response = await http.get(self.spec.ready_url, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def stop(self, deadline: float) -> int:
        """SIGTERM, wait up to ``deadline`` seconds, then SIGKILL its process group."""
        if self.running:
            self._signal(signal.SIGTERM, group=False)
            done, _ = await asyncio.wait({self.exited}, timeout=deadline)
            if not done:
                self.killed = True
                self.kill()
        code = await self.exited
        await self._drain_output()
        return code

    def kill(self) -> None:
        """SIGKILL the child and whatever it started in its process group."""
        if self.running:
            self._signal(signal.SIGKILL, group=True)

    def _signal(self, sig: signal.Signals, group: bool) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            else:
                self._process.send_signal(sig)

    async def _drain_output(self) -> None:
        """The last lines; a grandchild still holding the pipe must not hold the supervisor."""
        if self._pump is None:
            return
        done, _ = await asyncio.wait({self._pump}, timeout=OUTPUT_DRAIN_S)
        if not done:
            self._pump.cancel()
