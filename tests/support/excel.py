"""Excel workers for tests: in-process, or as separate OS processes; and an HTTP helper."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

READY_TIMEOUT = 30.0


def worker_env(amqp_url: str, database_url: str, exports_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": database_url,
        "WARREN_EXPORTS_DIR": str(exports_dir),
        "WARREN_EXCEL_HOST": "127.0.0.1",
        "WARREN_EXCEL_PORT": "0",
        "WARREN_EXCEL_PROGRESS_INTERVAL_S": "0.05",
        "WARREN_EXCEL_RETRY_BACKOFF_S": "0.05",
        "WARREN_EXCEL_SHUTDOWN_DEADLINE_S": "5",
        "WARREN_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


class WorkerProcess:
    """``python -m services.excel_worker`` in a child; ready once it logs "excel_worker ready"."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = {**os.environ, **env}
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

    async def start(self) -> WorkerProcess:
        self._ready = asyncio.get_running_loop().create_future()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.excel_worker",
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a SIGKILL to its group takes its build child too
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
            if self._changed is not None and not self._changed.done():
                self._changed.set_result(None)
            for message, waiter in tuple(self._waiters):
                if record.get("message") == message and not waiter.done():
                    waiter.set_result(record)
                    self._waiters.remove((message, waiter))
            if record.get("message") == "excel_worker ready" and self._ready and not self._ready.done():
                self._ready.set_result(int(record["port"]))
        if self._ready and not self._ready.done():
            output = "\n".join(str(r.get("message")) for r in self.logs[-20:])
            self._ready.set_exception(RuntimeError(f"worker exited before ready:\n{output}"))

    def messages(self, message: str) -> list[dict[str, Any]]:
        return [r for r in self.logs if r.get("message") == message]

    def changed(self) -> asyncio.Future[None]:
        """Resolves when the next log record arrives."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    async def wait_log(self, message: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the next log record whose message is ``message``."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((message, waiter))
        return await asyncio.wait_for(waiter, timeout)

    async def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout)
        return code

    async def kill(self) -> None:
        """SIGKILL the worker and everything it started (its build child, its fork server)."""
        if self.process is not None and self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        if self._reader is not None:
            await self._reader


async def http(
    port: int, path: str, *, token: str | None = None, method: str = "GET", body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, HTTPResponse | None, Any]:
    """Call the edge; return status, the response and its JSON body (None if not JSON)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    response: HTTPResponse | None
    try:
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
            body=payload if method != "GET" else None, request_timeout=30,
        )
    except HTTPClientError as exc:
        response = exc.response
        assert response is not None, exc
    assert response is not None
    parsed: Any = None
    if response.headers.get("Content-Type", "").startswith("application/json"):
        parsed = orjson.loads(response.body)
    return response.code, response, parsed


async def until_logged(
    processes: list[WorkerProcess], message: str, count: int, timeout: float = 30.0
) -> None:
    """Wait until the processes have logged ``message`` ``count`` times in all."""
    async with asyncio.timeout(timeout):
        while sum(len(p.messages(message)) for p in processes) < count:
            await asyncio.wait([p.changed() for p in processes], return_when=asyncio.FIRST_COMPLETED)
