"""The servers under test as child processes: the Warren edge and the python-socketio peer."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from bench.rpc import REPO_ROOT

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


class ServerProcess:
    """A child that logs JSON lines on stdout and one line ``{"message": ready, "port": n}``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        ready: str,
        log_path: Path,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self._cwd = cwd
        self._argv = list(argv)
        self._env = dict(env)
        self._ready_message = ready
        self._log_path = log_path
        self._tail: deque[str] = deque(maxlen=20)
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} not started"
        return self._process.pid

    async def start(self) -> int:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._process = await asyncio.create_subprocess_exec(
            *self._argv,
            cwd=self._cwd,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(ready))
        self.port = await asyncio.wait_for(ready, READY_TIMEOUT_S)
        return self.port

    async def _read(self, ready: asyncio.Future[int]) -> None:
        """Keep the pipe drained for the server's whole life; resolve ``ready`` once."""
        assert self._process is not None and self._process.stdout is not None
        with self._log_path.open("ab") as log:
            while line := await self._process.stdout.readline():
                log.write(line)
                self._tail.append(line.decode(errors="replace").rstrip())
                if not ready.done() and self._ready_message.encode() in line:
                    try:
                        ready.set_result(int(orjson.loads(line)["port"]))
                    except (orjson.JSONDecodeError, KeyError, ValueError) as exc:
                        ready.set_exception(exc)
        if not ready.done():
            tail = "\n".join(self._tail)
            ready.set_exception(RuntimeError(f"{self.name} exited before ready:\n{tail}"))

    def tail(self) -> list[str]:
        return list(self._tail)

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within the deadline."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, STOP_TIMEOUT_S)
        return process.returncode


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(extra: Mapping[str, str], root: Path = REPO_ROOT) -> dict[str, str]:
    """This process's environment without any WARREN_* setting, importing from ``root``,
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
    env["PYTHONPATH"] = str(root)
    env.update(extra)
    return env


def edge_process(
    amqp_url: str, database_url: str, log_path: Path, root: Path = REPO_ROOT,
    settings: Mapping[str, str] | None = None,
) -> ServerProcess:
    """The edge as ``warren edge`` runs it; ``root`` may be another checkout to compare,
    ``settings`` more WARREN_* variables (another value of one to compare)."""
    env = clean_env(
        {
            "WARREN_ENV": "development",
            "WARREN_AMQP_URL": amqp_url,
            "WARREN_DATABASE_URL": database_url,
            "WARREN_EDGE_HOST": "127.0.0.1",
            "WARREN_EDGE_PORT": str(free_port()),
            "WARREN_LOG_LEVEL": "INFO",
            **(settings or {}),
        },
        root,
    )
    argv = [sys.executable, "-m", "services.ws_edge"]
    return ServerProcess("edge", argv, env, "edge ready", log_path, cwd=root)


def peer_process(amqp_url: str, log_path: Path) -> ServerProcess:
    argv = [sys.executable, "-m", "bench.peer_server", "--amqp-url", amqp_url]
    return ServerProcess("peer", argv, clean_env({}), "peer ready", log_path)


def raise_file_limit() -> None:
    """A thousand sockets need more descriptors than the usual soft limit of 1024;
    children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
