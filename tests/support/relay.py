"""Relays for tests (in this process or as an OS process), and a chat client that
follows one ask to its answer."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from tests.support.client import Client

READY_TIMEOUT = 30.0

SERVICE_KEY = "relay-test-service-key-0123456789"


def relay_env(amqp_url: str, database_url: str, cat_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": database_url,
        "WARREN_CAT_URL": cat_url,
        "WARREN_CAT_PROTOCOL": "v1",
        "WARREN_CAT_TIMEOUT_S": "10",
        "WARREN_CAT_CONNECT_TIMEOUT_S": "1",
        "WARREN_RELAY_HOST": "127.0.0.1",
        "WARREN_RELAY_PORT": "0",
        "WARREN_RELAY_API_KEY": SERVICE_KEY,
        "WARREN_RELAY_TOKEN_FLUSH_S": "0.005",
        "WARREN_RELAY_SHUTDOWN_DEADLINE_S": "5",
    }
    env.update(overrides)
    return env


class Chat:
    """A WebSocket client that asks and collects every frame of each ask's answer."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.frames: list[dict[str, Any]] = []

    async def ask(self, text: str | None, ref: str = "q") -> str:
        """Send ``chat.ask``; return the ask id from the ``ack``."""
        data: dict[str, Any] = {} if text is None else {"text": text}
        await self.client.send({"type": "chat.ask", "ref": ref, "data": data})
        while True:
            frame = await self.client.recv()
            if frame.get("type") in {"ack", "error"} and "v" not in frame and frame.get("ref") == ref:
                assert frame["type"] == "ack", frame
                return str(frame["data"]["id"])
            self.frames.append(frame)

    async def outcome(self, ask_id: str, timeout: float = 15.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The ``chat.token`` events and the final ``chat.reply``/``chat.error`` of one ask."""
        tokens: list[dict[str, Any]] = []
        pending = list(self.frames)
        self.frames.clear()
        while True:
            frame = pending.pop(0) if pending else await self.client.recv(timeout)
            data = frame.get("data", {})
            if "v" not in frame or data.get("ask_id") != ask_id:
                self.frames.append(frame)
                continue
            if frame["type"] == "chat.token":
                tokens.append(frame)
            else:
                self.frames.extend(pending)
                return tokens, frame


class RelayProcess:
    """``python -m services.cat_relay`` in a child process; ready once it logs so."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = {**os.environ, **env, "WARREN_LOG_LEVEL": "INFO"}
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.output: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []

    async def start(self) -> RelayProcess:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cat_relay", env=self._env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(ready))
        self.port = await asyncio.wait_for(asyncio.shield(ready), READY_TIMEOUT)
        return self

    async def _read(self, ready: asyncio.Future[int]) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.output.append(line.decode(errors="replace").rstrip())
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if record.get("message") == "cat_relay ready" and not ready.done():
                ready.set_result(int(record["port"]))
            for message, waiter in tuple(self._waiters):
                if record.get("message") == message and not waiter.done():
                    waiter.set_result(None)
                    self._waiters.remove((message, waiter))
        if not ready.done():
            tail = "\n".join(self.output[-20:])
            ready.set_exception(RuntimeError(f"the relay exited before it was ready:\n{tail}"))

    async def logged(self, message: str, timeout: float = 30.0) -> None:
        """Wait for the next log record whose message is ``message``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((message, waiter))
        await asyncio.wait_for(waiter, timeout)

    def terminate(self) -> None:
        """SIGTERM, as an orchestrator stopping the relay sends it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float = 30.0) -> int:
        """Wait for the process to end; its exit code."""
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout)
        return code

    async def kill(self) -> None:
        """SIGKILL: the relay dies as in a crash, with no chance to clean up."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader
