"""Fixtures for hostile tests: every service in this process, on the test's vhost and
database, and a raw connection of the test's own to publish whatever it likes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.cat_relay.server import RelayServer
from services.cat_relay.settings import RelaySettings
from services.excel_worker.server import ExcelWorkerServer
from services.excel_worker.settings import ExcelSettings
from services.runner.server import RunnerServer
from tests.hostile.broker import RawBroker
from tests.support.cat_v1 import CatV1Double
from tests.support.excel import worker_env
from tests.support.relay import relay_env
from tests.support.runner import make_runner  # noqa: F401  (a fixture)

# Runs that fuzzed input happens to start end quickly and print little.
RUNNER_LIMITS = {
    "WARREN_RUNNER_MAX_WALL_S": "1",
    "WARREN_RUNNER_MAX_OUTPUT_BYTES": "65536",
    "WARREN_RUNNER_SHUTDOWN_DEADLINE_S": "5",
}
# Exports that fuzzed input happens to ask for stay small.
WORKER_LIMITS = {
    "WARREN_EXCEL_MAX_SAMPLE_ROWS": "50",
    "WARREN_EXCEL_MAX_TABLE_ROWS": "50",
    "WARREN_EXCEL_MAX_ACTIVITY_ROWS": "50",
    "WARREN_EXCEL_BUILD_TIMEOUT_S": "10",
}


@pytest.fixture
async def cat() -> AsyncIterator[CatV1Double]:
    double = CatV1Double().start()
    double.hold.set()  # a fuzzed "!hold" must not hold anything
    yield double
    await double.stop()


@pytest.fixture
async def relay(amqp_url: str, database_url: str, cat: CatV1Double) -> AsyncIterator[RelayServer]:
    settings = RelaySettings.from_env(relay_env(amqp_url, database_url, cat.url))
    server = RelayServer(settings, CollectorRegistry())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def runner(make_runner: Callable[..., RunnerServer]) -> RunnerServer:  # noqa: F811
    server = make_runner(**RUNNER_LIMITS)
    await server.start()
    return server


@pytest.fixture
def exports_dir(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
async def worker(
    amqp_url: str, database_url: str, exports_dir: Path
) -> AsyncIterator[ExcelWorkerServer]:
    env = worker_env(amqp_url, database_url, exports_dir, **WORKER_LIMITS)
    server = ExcelWorkerServer(ExcelSettings.from_env(env), CollectorRegistry())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def raw_broker(amqp_url: str) -> AsyncIterator[RawBroker]:
    broker = await RawBroker.open(amqp_url)
    yield broker
    await broker.close()
