"""Edges for tests: in-process on a free port, or as a separate OS process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.ws_edge.server import EdgeServer
from services.ws_edge.settings import EdgeSettings
from tests.support.service_process import ServiceProcess


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


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll an in-process edge's state, where no event tells it, until ``condition``
    holds; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.01)


class EdgeProcess(ServiceProcess):
    """``python -m services.ws_edge`` in a child process (tests/support/service_process.py)."""

    module = "services.ws_edge"
    ready_message = "edge ready"


#: What :func:`spawn_edge` gives a test: start one more edge process, with overrides.
Spawn = Callable[..., Awaitable[EdgeProcess]]


@pytest.fixture
async def spawn_edge(amqp_url: str, database_url: str) -> AsyncIterator[Spawn]:
    """Edges as OS processes on the test's vhost and database; all killed afterwards.
    A fixture to import where it is used (``from tests.support.edge import spawn_edge``)."""
    started: list[EdgeProcess] = []

    async def spawn(**overrides: str) -> EdgeProcess:
        # No service runs beside these edges: none waits for the catalogue's answers.
        edge = EdgeProcess(edge_env(
            amqp_url, database_url, **{"WARREN_EDGE_CATALOGUE_WAIT_S": "0", **overrides}
        ))
        started.append(edge)
        return await edge.start()

    yield spawn
    for edge in started:
        await edge.kill()


@pytest.fixture
async def edge_on_private(private_amqp_url: str, tmp_path: Path) -> AsyncIterator[EdgeServer]:
    """An in-process edge on the private RabbitMQ node, which the test may restart.
    A fixture to import where it is used."""
    settings = EdgeSettings.from_env(edge_env(private_amqp_url, f"sqlite:///{tmp_path / 'w.db'}"))
    server = EdgeServer(settings, CollectorRegistry())
    await server.start()
    yield server
    await server.stop()
