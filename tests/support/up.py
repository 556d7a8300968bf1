"""``warren up`` for tests: a child process whose output lines are collected and awaited.

Blocking on purpose (a reader thread and a condition variable): browser tests drive
Playwright's synchronous API; async tests call the waits through ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from services.supervisor.ports import free_port

START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
CONSOLE = re.compile(r"console\s+(http://\S+)")
SUMMARY_END = re.compile(r"^\[up\] Ctrl-C stops everything\.$")
STARTED = re.compile(r"started (\S+) \(pid (\d+), port (\d+)")
PASSWORD = re.compile(r"^\[up\]\s+(alice|bob|carol)\s+password (\S+)", re.MULTILINE)


def no_cat(tmp_path: Path) -> dict[str, str]:
    """Nothing answers at the Cat's address, and no Cat is installed."""
    return {
        "WARREN_CAT_URL": f"http://127.0.0.1:{free_port('127.0.0.1')}",
        "WARREN_CAT_VENV": str(tmp_path / "no-cat-here"),
        "WARREN_CAT_CONNECT_TIMEOUT_S": "1",
    }


async def login(http: httpx.AsyncClient, base: str, user: str, password: str) -> str:
    response = await http.post(f"{base}/auth/login", json={"username": user, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def up_env(amqp_url: str, workdir: Path, **overrides: str) -> dict[str, str]:
    """Everything on loopback, on free ports, with its own vhost, database and files."""
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": f"sqlite:///{workdir / 'warren.db'}",
        "WARREN_EXPORTS_DIR": str(workdir / "exports"),
        "WARREN_UP_CAT_DIR": str(workdir / "cat"),
        "WARREN_EDGE_PORT": "0",
        "WARREN_RELAY_PORT": "0",
        "WARREN_RUNNER_PORT": "0",
        "WARREN_EXCEL_PORT": "0",
        "WARREN_EDGE_SHUTDOWN_DEADLINE_S": "3",
        "WARREN_RELAY_SHUTDOWN_DEADLINE_S": "3",
        "WARREN_RUNNER_SHUTDOWN_DEADLINE_S": "3",
        "WARREN_EXCEL_SHUTDOWN_DEADLINE_S": "3",
        "NO_COLOR": "1",
    }
    env.update(overrides)
    return env


class WarrenUp:
    def __init__(
        self, env: Mapping[str, str], args: Sequence[str], cwd: Path,
        python: str = sys.executable,
    ) -> None:
        """``python``: the interpreter of the environment Warren runs in (another
        virtualenv's, for an application installed there)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
        self._env = {**inherited, **env}
        self._args = list(args)
        self._cwd = cwd
        self._python = python
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.console_url = ""

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None
        return self._process

    def start(self, timeout: float = START_TIMEOUT) -> WarrenUp:
        """Launch, and wait until everything is up and the summary printed."""
        self.launch()
        self.wait_for(SUMMARY_END, timeout=timeout)
        self.console_url = self.wait_for(CONSOLE).group(1)
        return self

    def launch(self) -> None:
        self._cwd.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [self._python, "-m", "services.cli", "up", *self._args],
            cwd=self._cwd,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="warren-up-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """A position in the output; ``wait_for(..., after=mark)`` looks only past it."""
        with self._changed:
            return len(self.lines)

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = 30.0, after: int = 0
    ) -> re.Match[str]:
        """The first line from ``after`` on that matches; fails when the process ends first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        seen = after

        def found() -> re.Match[str] | None:
            nonlocal seen
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(self.lines)
            return None

        with self._changed:
            match: re.Match[str] | None = None

            def ready() -> bool:
                nonlocal match
                match = found()
                return match is not None or self.process.poll() is not None

            self._changed.wait_for(ready, timeout)
            if match is None:
                tail = "\n".join(self.lines[-40:])
                state = (
                    f"exited with {self.process.returncode}"
                    if self.process.poll() is not None
                    else "running"
                )
                raise AssertionError(
                    f"no line matching {regex.pattern!r} ({state}); output:\n{tail}"
                )
            return match

    def children(self) -> dict[str, tuple[int, int]]:
        """Child name -> (pid, port), from the supervisor's "started" lines."""
        with self._changed:
            return {m[1]: (int(m[2]), int(m[3])) for m in map(STARTED.search, self.lines) if m}

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, as a service manager would; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def kill(self) -> None:
        """The supervisor and each child's process group, for a test that failed half-way.

        After a clean stop they are all gone already, and this does nothing.
        """
        if self._process is None:
            return
        for pid in (self._process.pid, *(pid for pid, _ in self.children().values())):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._process.wait()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)
