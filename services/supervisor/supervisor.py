"""Start children tier by tier, each tier ready before the next; stop them in reverse.

A required child that exits or is not ready in time aborts the start. An optional one
(the local Cat) is waited for after the others and only warned about. A child that dies
later is reported and the others keep running; the exit status of ``warren up`` then
says something went wrong.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence

import httpx

from services.supervisor.child import Child, ChildFailed, describe_exit
from services.supervisor.output import Output
from services.supervisor.plan import ChildSpec


class StartFailed(RuntimeError):
    pass


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        base_env: Mapping[str, str],
        output: Output,
        http: httpx.AsyncClient,
        *,
        ready_timeout_s: float,
        optional_ready_timeout_s: float,
        stop_timeout_s: float,
    ) -> None:
        self.children = [Child(spec, base_env, output) for spec in specs]
        self._output = output
        self._http = http
        self._ready_timeout_s = ready_timeout_s
        self._optional_ready_timeout_s = optional_ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._started = False
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []
        self.failures: list[str] = []  # unexpected exits and kills, for the exit status
        output.width = max([8, *(len(spec.name) for spec in specs)])

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def _tiers(self) -> list[list[Child]]:
        ordered = sorted(self.children, key=lambda child: child.spec.tier)
        return [list(tier) for _, tier in itertools.groupby(ordered, key=lambda c: c.spec.tier)]

    async def start(self) -> None:
        """Raises :class:`StartFailed` when a required child does not get ready."""
        optional: list[tuple[Child, asyncio.Task[None]]] = []
        for tier in self._tiers():
            for child in tier:
                await child.start()
                self._watchers.append(asyncio.create_task(self._watch(child)))
                logs = f", output in {child.spec.log_file}" if child.spec.log_file else ""
                self._output.note(
                    f"started {child.name} (pid {child.pid}, port {child.spec.port}{logs})"
                )
            try:
                async with asyncio.TaskGroup() as group:
                    for child in tier:
                        if child.spec.required:
                            group.create_task(child.wait_ready(self._http, self._ready_timeout_s))
                        else:
                            ready = child.wait_ready(self._http, self._optional_ready_timeout_s)
                            optional.append((child, asyncio.create_task(ready)))
            except* ChildFailed as failed:
                for task in (task for _, task in optional):
                    task.cancel()
                raise StartFailed("; ".join(str(exc) for exc in failed.exceptions)) from None
            self._check_alive()
        for child, waiting in optional:
            try:
                await waiting
                self._output.note(f"{child.name} ready at {child.spec.ready_url}")
            except ChildFailed as exc:
                for line in child.tail if child.spec.log_file else ():
                    self._output.child(child.name, child.spec.kind, line)
                self._output.warn(f"{exc}; carrying on without it")
        self._check_alive()
        self._started = True

    def _check_alive(self) -> None:
        """A required child of an earlier tier that died while later ones started."""
        for child in self.children:
            if child.spec.required and child.started and not child.running:
                code = describe_exit(child.exited.result())
                raise StartFailed(f"{child.name} exited with {code} during start-up")

    async def _watch(self, child: Child) -> None:
        code = await child.exited
        if self._started and not self._stopping:  # during start-up, start() reports it
            how = describe_exit(code)
            message = f"{child.name} (pid {child.pid}) exited unexpectedly with {how}"
            self.failures.append(message)
            self._output.error(f"{message}; the other services keep running")

    async def stop(self) -> None:
        """SIGTERM tier by tier, the last started first; SIGKILL for what outlives the deadline."""
        self._stopping = True
        for tier in reversed(self._tiers()):
            started = [child for child in tier if child.running]
            if not started:
                continue
            self._output.note("stopping " + ", ".join(child.name for child in started))
            codes = await asyncio.gather(*(child.stop(self._stop_timeout_s) for child in started))
            for child, code in zip(started, codes, strict=True):
                if child.killed:
                    message = f"{child.name} did not stop within {self._stop_timeout_s:g} s: killed"
                    self.failures.append(message)
                    self._output.warn(message)
                elif code == 0:
                    self._output.note(f"{child.name} stopped")
                else:
                    self._output.note(f"{child.name} stopped ({describe_exit(code)})")
        for watcher in self._watchers:
            watcher.cancel()

    def kill_all(self) -> None:
        """SIGKILL whatever still runs: on a second Ctrl-C, and after a stop that failed."""
        running = [child for child in self.children if child.running]
        if running:
            self.failures.append("killed: " + ", ".join(child.name for child in running))
        for child in running:
            child.kill()
