"""Edges for tests: in-process on a free port, or as a separate OS process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import orjson

READY_TIMEOUT = 30.0


def edge_env(amqp_url: str, database_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": database_url,
        "WARREN_EDGE_HOST": "127.0.0.1",
        "WARREN_EDGE_PORT": "0",
        "WARREN_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


class EdgeProcess:
    """``python -m services.ws_edge`` in a child process; ready once it logs "edge ready"."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = {**os.environ, **env}
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.logs: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[int] | None = None
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> EdgeProcess:
        self._ready = asyncio.get_running_loop().create_future()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.ws_edge",
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
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
            self.logs.append(record)
            for message, waiter in tuple(self._waiters):
                if record.get("message") == message and not waiter.done():
                    waiter.set_result(record)
                    self._waiters.remove((message, waiter))
            if record.get("message") == "edge ready" and self._ready and not self._ready.done():
                self._ready.set_result(int(record["port"]))
        if self._ready and not self._ready.done():
            output = "\n".join(str(r.get("message")) for r in self.logs[-20:])
            self._ready.set_exception(RuntimeError(f"edge exited before ready:\n{output}"))

    async def wait_log(self, message: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the next log record whose message is ``message``."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((message, waiter))
        return await asyncio.wait_for(waiter, timeout)

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout)
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader
