"""A Warren service as a separate OS process, for tests that kill, signal or scale it.

``python -m <module>`` in a child process; its JSON log records are collected as they
come, and it is ready once it logs ``<service> ready`` with the port it serves on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import orjson

READY_TIMEOUT = 30.0


class ServiceProcess:
    module: ClassVar[str]
    ready_message: ClassVar[str]
    #: In a session of its own, so that ``kill`` takes whatever the service started too.
    own_session: ClassVar[bool] = False

    def __init__(self, env: Mapping[str, str], args: Sequence[str] = ()) -> None:
        self._env = {**os.environ, **env}
        self._args = tuple(args)  # after ``python -m <module>``
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.logs: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[int] | None = None
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self._changed: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> Self:
        self._ready = asyncio.get_running_loop().create_future()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, *self._args,
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=self.own_session,
        )
        self._reader = asyncio.create_task(self._read())
        self.port = await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = {"message": line.decode(errors="replace").rstrip()}
            if not isinstance(record, dict):
                record = {"message": str(record)}
            self.logs.append(record)
            if self._changed is not None and not self._changed.done():
                self._changed.set_result(None)
            for message, waiter in tuple(self._waiters):
                if record.get("message") == message and not waiter.done():
                    waiter.set_result(record)
                    self._waiters.remove((message, waiter))
            if record.get("message") == self.ready_message and self._ready and not self._ready.done():
                self._ready.set_result(int(record["port"]))
        if self._ready and not self._ready.done():
            self._ready.set_exception(
                RuntimeError(f"{self.module} exited before it was ready:\n{self.tail()}")
            )

    def tail(self, lines: int = 20) -> str:
        return "\n".join(str(record.get("message")) for record in self.logs[-lines:])

    def messages(self, message: str) -> list[dict[str, Any]]:
        """The log records so far whose message is ``message``."""
        return [record for record in self.logs if record.get("message") == message]

    def changed(self) -> asyncio.Future[None]:
        """Resolves when the next log record arrives."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    async def wait_log(self, message: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first log record whose message is ``message``, logged already or awaited."""
        for record in self.logs:
            if record.get("message") == message:
                return record
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((message, waiter))
        return await asyncio.wait_for(waiter, timeout)

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(number)

    async def exited(self, timeout: float = 30.0) -> int:
        """Wait for the process to end, and its output to be read; its exit code."""
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout)
        return code

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an orchestrator stopping the service sends it; the exit code."""
        self.signal(signal.SIGTERM)
        return await self.exited(timeout)

    async def kill(self) -> None:
        """SIGKILL: the service dies as in a crash, with no chance to clean up."""
        if self.process is not None and self.process.returncode is None:
            if self.own_session:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader
