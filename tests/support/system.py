"""The whole system for fault tests: ``warren up`` with replicas of every service, on the
private RabbitMQ node, a PostgreSQL database of its own and a v1 Cat double.

Everything is on loopback. Each test gets a fresh system: faults leave state behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from tests.support.cat_v1 import CatV1Double
from tests.support.client import Client
from tests.support.up import WarrenUp, up_env

REPLICAS = ("--edges", "2", "--relays", "2", "--runners", "2", "--workers", "2")
READY_TIMEOUT = 60.0


@dataclass
class System:
    up: WarrenUp
    cat: CatV1Double
    killed: set[str] = field(default_factory=set)

    @classmethod
    async def start(
        cls, amqp_url: str, database_url: str, workdir: Path, **settings: str
    ) -> System:
        cat = CatV1Double().start()
        env = up_env(
            amqp_url, workdir,
            WARREN_DATABASE_URL=database_url,
            WARREN_CAT_URL=cat.url,
            WARREN_CAT_PROTOCOL="v1",
            **settings,
        )
        up = WarrenUp(env, REPLICAS, workdir)
        await asyncio.to_thread(up.start)
        return cls(up, cat)

    async def stop(self) -> None:
        try:
            await asyncio.to_thread(self.up.stop)
        finally:
            self.up.kill()
            await self.cat.stop()

    # -- the children ----------------------------------------------------------

    def children(self) -> Mapping[str, tuple[int, int]]:
        """Name (``edge-1``, ``relay-2``...) -> (pid, port)."""
        return {name: value for name, value in self.up.children().items() if name != "cat"}

    def names(self, kind: str) -> list[str]:
        return sorted(name for name in self.children() if name.rsplit("-", 1)[0] == kind)

    def pid(self, name: str) -> int:
        return self.children()[name][0]

    def port(self, name: str) -> int:
        return self.children()[name][1]

    def name_of(self, instance_id: str) -> str:
        """The child whose instance id this is (``runner-1-<host>`` -> ``runner-1``), as
        events and logs name a replica (``run.started``'s ``replica``, ``welcome``'s ``edge``)."""
        for name in self.children():
            if instance_id.startswith(f"{name}-"):
                return name
        raise LookupError(f"no child has the instance id {instance_id!r}")

    def kill(self, name: str) -> None:
        """SIGKILL one replica and whatever it started (build children, job processes)."""
        process = psutil.Process(self.pid(name))
        for child in process.children(recursive=True):
            child.kill()
        os.kill(process.pid, signal.SIGKILL)
        self.killed.add(name)

    async def ready(self, name: str) -> bool:
        try:
            response = await AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{self.port(name)}/readyz", request_timeout=2
            )
        except (HTTPClientError, OSError):
            return False
        return response.code == 200

    async def wait_ready(
        self, timeout: float = READY_TIMEOUT, services: tuple[str, ...] = ()
    ) -> None:
        """Every replica not killed answers /readyz with 200, polled with backoff; only
        those of ``services`` (``edge``, ``relay``, ``runner``, ``excel``) if given."""
        def wanted(name: str) -> bool:
            return not services or name.rsplit("-", 1)[0] in services

        async def all_ready() -> None:
            delay = 0.05
            while True:
                alive = [name for name in self.children()
                         if name not in self.killed and wanted(name)]
                states = await asyncio.gather(*(self.ready(name) for name in alive))
                if all(states):
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

        await asyncio.wait_for(all_ready(), timeout)

    def alive(self) -> set[str]:
        return {name for name, (pid, _port) in self.children().items()
                if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}

    # -- who holds what --------------------------------------------------------

    def owner_of_port(self, kind: str, local_port: int) -> str:
        """The replica of ``kind`` with a TCP connection from ``local_port`` (its Cat socket)."""
        for name in self.names(kind):
            if name in self.killed:
                continue
            connections = psutil.Process(self.pid(name)).net_connections(kind="tcp")
            if any(c.laddr and c.laddr.port == local_port for c in connections):
                return name
        raise LookupError(f"no {kind} replica holds local port {local_port}")

    def building_worker(self) -> str | None:
        """The excel_worker replica with a build child at work, if any."""
        for name in self.names("excel"):
            if name in self.killed:
                continue
            # Each worker's fork server is its child; a build is the fork server's child.
            for helper in psutil.Process(self.pid(name)).children():
                if helper.children():
                    return name
        return None

    # -- clients ---------------------------------------------------------------

    async def connect(self, edge: str, token: str) -> Client:
        return await Client.connect(self.port(edge), token)
