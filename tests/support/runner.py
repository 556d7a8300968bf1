"""Runner replicas for tests: in-process on a free port, or as a separate OS process,
plus a WebSocket client helper that collects one run's events."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.runner.server import RunnerServer
from services.runner.settings import RunnerSettings
from tests.support.client import Client
from tests.support.service_process import ServiceProcess


def runner_env(amqp_url: str, database_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": database_url,
        "WARREN_RUNNER_HOST": "127.0.0.1",
        "WARREN_RUNNER_PORT": "0",
        "WARREN_LOG_LEVEL": "INFO",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    env.update(overrides)
    return env


@pytest.fixture
async def make_runner(
    amqp_url: str, database_url: str
) -> AsyncIterator[Callable[..., RunnerServer]]:
    """Build in-process runner replicas; every one built is stopped afterwards."""
    built: list[RunnerServer] = []

    def build(**overrides: str) -> RunnerServer:
        settings = RunnerSettings.from_env(runner_env(amqp_url, database_url, **overrides))
        server = RunnerServer(settings, CollectorRegistry())
        built.append(server)
        return server

    yield build
    for server in built:
        await server.stop()


class RunnerProcess(ServiceProcess):
    """``python -m services.runner`` in a child process (tests/support/service_process.py)."""

    module = "services.runner"
    ready_message = "runner ready"


@dataclass
class RunEvents:
    """Everything one client received about one run."""

    run_id: str
    queued: dict[str, Any] | None = None
    started: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    finished: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    def lines(self, stream: str | None = None) -> list[str]:
        return [
            line for o in self.outputs if stream is None or o["stream"] == stream
            for line in o["lines"]
        ]


async def start_run(client: Client, job: str, args: dict[str, Any] | None = None,
                    ref: str = "start") -> str:
    data: dict[str, Any] = {"job": job}
    if args is not None:
        data["args"] = args
    reply = await client.request({"type": "run.start", "ref": ref, "data": data})
    assert reply["type"] == "ack", reply
    return str(reply["data"]["id"])


async def stop_run(client: Client, run_id: str, ref: str = "stop") -> str:
    reply = await client.request({"type": "run.stop", "ref": ref, "data": {"run_id": run_id}})
    assert reply["type"] == "ack", reply
    return str(reply["data"]["id"])


async def collect(
    client: Client,
    run_id: str,
    *,
    until: str = "run.finished",
    timeout: float = 20.0,
    events: RunEvents | None = None,
    command_id: str | None = None,
) -> RunEvents:
    """Read ``client`` until an event of type ``until`` about ``run_id`` arrives.

    With ``until="run.error"``, waits for the error whose command_id is ``command_id``
    (default: ``run_id``, the start command's id).
    """
    events = events or RunEvents(run_id)
    wanted_command = command_id or run_id

    async def read() -> None:
        while True:
            frame = await client.recv(timeout)
            data = frame.get("data") or {}
            kind = frame.get("type")
            if kind == "run.error" and data.get("command_id") == wanted_command:
                events.errors.append(data)
                if until == "run.error":
                    return
                continue
            if data.get("run_id") != run_id:
                continue
            if kind == "run.queued":
                events.queued = data
            elif kind == "run.started":
                events.started = data
            elif kind == "run.output":
                events.outputs.append(data)
            elif kind == "run.finished":
                events.finished = data
            if kind == until:
                return

    await asyncio.wait_for(read(), timeout)
    return events
