"""HAProxy in TCP mode in front of several RabbitMQ nodes: the one address services use,
as a Kubernetes Service is in production.

Each node's AMQP port is health-checked every half second; a node is out after two
failed checks and back after two good ones. A connection through HAProxy stays on the
node it was given: when that node stops, the connection breaks and the client
reconnects through HAProxy to a live node. The process runs in the foreground as the
test session's child, with its configuration, stats socket and log in its directory.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.private_broker import free_port

CHECK_INTERVAL_MS = 500
START_TIMEOUT_S = 30.0
# Longer than any AMQP heartbeat interval: HAProxy must never be what ends an idle link.
IDLE_TIMEOUT = "1h"


class HaProxyUnavailable(RuntimeError):
    """HAProxy is not installed on this machine."""


@dataclass
class HaProxy:
    directory: Path
    port: int
    servers: Mapping[str, int]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, directory: Path, servers: Mapping[str, int]) -> HaProxy:
        """Balance a free loopback port over ``servers`` (server name -> loopback port)."""
        if shutil.which("haproxy") is None:
            raise HaProxyUnavailable("haproxy is not installed on this machine (Debian: haproxy)")
        directory.mkdir(parents=True, exist_ok=True)
        proxy = cls(directory=directory, port=free_port(), servers=dict(servers))
        (directory / "haproxy.cfg").write_text(proxy._config())
        log = (directory / "haproxy.log").open("ab")
        proxy.process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(directory / "haproxy.cfg")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        proxy.wait_until(lambda states: bool(states) and all(s == "UP" for s in states.values()),
                         START_TIMEOUT_S, "every server UP")
        return proxy

    def _config(self) -> str:
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port} check inter {CHECK_INTERVAL_MS}ms fall 2 rise 2"
            for name, port in self.servers.items()
        )
        return f"""\
global
    maxconn 4000
    stats socket {self.directory / 'haproxy.sock'} mode 600 level admin

defaults
    mode tcp
    # A node that stops refuses connections before its check fails: try another one.
    retries 3
    option redispatch
    timeout connect 2s
    timeout client {IDLE_TIMEOUT}
    timeout server {IDLE_TIMEOUT}

listen amqp
    bind 127.0.0.1:{self.port}
    balance leastconn
{servers}
"""

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def states(self) -> dict[str, str]:
        """Server name -> HAProxy's view of it (``UP``, ``DOWN``, ``UP 1/2``...)."""
        listed = self._command("show stat")
        header, *rows = listed.splitlines()
        columns = header.lstrip("# ").split(",")
        states: dict[str, str] = {}
        for row in rows:
            values = dict(zip(columns, row.split(","), strict=False))
            if values.get("pxname") == "amqp" and values.get("svname") in self.servers:
                states[values["svname"]] = values["status"]
        return states

    def wait_until(
        self, condition: Callable[[dict[str, str]], bool], timeout: float, what: str
    ) -> None:
        """Poll the servers' states (HAProxy's checks run every half second) until
        ``condition(states)`` holds."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"haproxy exited with {self.process.returncode}: "
                    f"{(self.directory / 'haproxy.log').read_text()[-2000:]}"
                )
            try:
                states = self.states()
            except OSError:
                states = {}
            if condition(states):
                return
            time.sleep(0.1)
        raise TimeoutError(f"haproxy: not {what} after {timeout} s: {states}")

    def _command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
            stats.settimeout(5)
            stats.connect(str(self.directory / "haproxy.sock"))
            stats.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := stats.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
