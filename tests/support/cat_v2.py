"""A real Cheshire Cat 2.x in a child process, from its own virtualenv (``.venv-cat``)."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = b"Uvicorn running on"
START_TIMEOUT = 90.0


def cat_python() -> Path | None:
    """The Cat's interpreter, or None when ``scripts/test`` could not install it."""
    venv = Path(os.environ.get("WARREN_CAT_VENV", ROOT / ".venv-cat"))
    python = venv / "bin" / "python"
    return python if python.exists() and (venv / ".warren-cat").exists() else None


class CatV2Process:
    """Started once per test session: the Cat takes seconds to boot."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self._python = python
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.output = bytearray()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CatV2Process:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._process = subprocess.Popen(
                [str(self._python), str(ROOT / "scripts" / "cat-v2.py"),
                 "--port", str(self.port), "--fd", str(listener.fileno())],
                cwd=self._workdir, pass_fds=(listener.fileno(),),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
        finally:
            listener.close()
        self._wait_ready()
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stream = self._process.stdout
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(stream, selectors.EVENT_READ)
            while READY_LINE not in self.output:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.stop()
                    raise RuntimeError(f"the Cat was not ready in {START_TIMEOUT:g} s")
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"the Cat exited:\n{self.output.decode(errors='replace')[-3000:]}")
                self.output += chunk

    def _drain(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while os.read(self._process.stdout.fileno(), 65536):
            pass

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
