"""JSON-lines requests between the bench's orchestrator and its worker processes.

A worker reads one request per line on stdin and writes one reply per line on
stdout; each request carries an ``id`` that its reply repeats. Requests run
concurrently, so a long ``collect`` does not hold up a ``status``. A worker exits
when its stdin closes (the orchestrator ended or died) or its lifetime runs out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
LINE_LIMIT = 64 << 20
REPO_ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """A worker answered with an error, or died."""


# -- worker side ----------------------------------------------------------------


async def serve(handlers: Mapping[str, Handler], lifetime_s: float) -> None:
    """Answer requests until stdin closes or ``lifetime_s`` passes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(request: dict[str, Any]) -> None:
        reply: dict[str, Any]
        try:
            handler = handlers[request["cmd"]]
            reply = await handler(request)
        except Exception as exc:  # reported to the orchestrator, which decides
            log.exception("request %s failed", request.get("cmd"))
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["id"] = request["id"]
        sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")
        sys.stdout.buffer.flush()

    async def read_loop() -> None:
        while line := await reader.readline():
            task = asyncio.create_task(answer(orjson.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    try:
        await asyncio.wait_for(read_loop(), lifetime_s)
    except TimeoutError:
        log.warning("worker lifetime of %.0f s is over", lifetime_s)
    for task in tuple(tasks):
        task.cancel()


# -- orchestrator side -----------------------------------------------------------


class Worker:
    """One ``python -m <module>`` child answering requests on its stdin/stdout."""

    def __init__(self, name: str, module: str, args: Sequence[str], log_path: Path) -> None:
        self.name = name
        self._argv = [sys.executable, "-m", module, *args]
        self._log_path = log_path
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    @property
    def pid(self) -> int:
        assert self._process is not None, "worker not started"
        return self._process.pid

    async def start(self) -> None:
        with self._log_path.open("ab") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                *self._argv,
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=LINE_LIMIT,
            )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while line := await self._process.stdout.readline():
            reply = orjson.loads(line)
            future = self._pending.pop(reply.pop("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerError(f"{self.name} exited; see {self._log_path}"))
        self._pending.clear()

    async def call(self, cmd: str, timeout: float, **params: Any) -> dict[str, Any]:
        """Send one request and wait at most ``timeout`` seconds for its reply."""
        assert self._process is not None and self._process.stdin is not None
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._process.stdin.write(orjson.dumps({"id": request_id, "cmd": cmd, **params}) + b"\n")
        await self._process.stdin.drain()
        try:
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)
        if "error" in reply:
            raise WorkerError(f"{self.name} {cmd}: {reply['error']}")
        return reply

    async def stop(self, timeout: float = 10.0) -> None:
        """Close stdin (the worker exits by itself), then kill it if it lingers."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout)


def run_worker(handlers: Mapping[str, Handler], lifetime_s: float) -> None:
    """The entry point of a worker module: uvloop, logs to stderr, serve until done."""
    import uvloop

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvloop.run(serve(handlers, lifetime_s))
