"""Every service's start and stop go through one lifecycle (shared/lifecycle.py): a start
that fails after the broker connected closes that connection, and a service that
started stops in order and only once."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from services.cat_relay.server import RelayServer
from services.cat_relay.settings import RelaySettings
from services.excel_worker.server import ExcelWorkerServer
from services.excel_worker.settings import ExcelSettings
from services.runner.server import RunnerServer
from services.runner.settings import RunnerSettings
from services.ws_edge.server import EdgeServer
from services.ws_edge.settings import EdgeSettings
from tests.support.edge import edge_env
from tests.support.excel import worker_env
from tests.support.relay import relay_env
from tests.support.runner import runner_env


class _Server(Protocol):
    connection: AbstractRobustConnection | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on: a service told to use it cannot."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def _edge(amqp: str, db: str, port: int, _tmp: Path) -> _Server:
    env = edge_env(amqp, db, WARREN_EDGE_PORT=str(port))
    return EdgeServer(EdgeSettings.from_env(env), CollectorRegistry())


def _relay(amqp: str, db: str, port: int, _tmp: Path) -> _Server:
    # The Cat is not asked at start: no Cat needs to listen at that address.
    env = relay_env(amqp, db, "http://127.0.0.1:9", WARREN_RELAY_PORT=str(port))
    return RelayServer(RelaySettings.from_env(env), CollectorRegistry())


def _runner(amqp: str, db: str, port: int, _tmp: Path) -> _Server:
    env = runner_env(amqp, db, WARREN_RUNNER_PORT=str(port))
    return RunnerServer(RunnerSettings.from_env(env), CollectorRegistry())


def _worker(amqp: str, db: str, port: int, tmp: Path) -> _Server:
    env = worker_env(amqp, db, tmp / "exports", WARREN_EXCEL_PORT=str(port))
    return ExcelWorkerServer(ExcelSettings.from_env(env), CollectorRegistry())


SERVICES = [_edge, _relay, _runner, _worker]


@pytest.mark.parametrize("build", SERVICES, ids=["edge", "relay", "runner", "excel_worker"])
async def test_a_start_that_fails_after_the_broker_connected_closes_the_connection(
    build: Callable[[str, str, int, Path], _Server],
    amqp_url: str,
    database_url: str,
    taken_port: int,
    tmp_path: Path,
) -> None:
    server = build(amqp_url, database_url, taken_port, tmp_path)
    # The listener comes last: by then the database and the broker are in use.
    with pytest.raises(OSError):
        await server.start()
    assert server.connection is not None, "the broker connected before the listener"
    assert server.connection.is_closed
    await server.stop()  # what a supervisor does next: nothing is left to close


@pytest.mark.parametrize("build", SERVICES, ids=["edge", "relay", "runner", "excel_worker"])
async def test_a_started_service_stops_once_however_often_it_is_told(
    build: Callable[[str, str, int, Path], _Server],
    amqp_url: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    server = build(amqp_url, database_url, 0, tmp_path)
    await server.start()
    assert server.connection is not None and not server.connection.is_closed
    await server.stop()
    assert server.connection.is_closed
    await server.stop()
