"""The whole system under fire: ``warren up`` with two replicas of every service on the
private RabbitMQ node, PostgreSQL behind a TCP proxy that a test can cut, and a v1 Cat
double. Each test gets a fresh system; faults leave state behind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.chaos.ledger import Ledger
from tests.support.system import System
from tests.support.tcp_proxy import TcpProxy

# Short enough that "mid-work" is a wide window and recovery is quick; see each test.
SETTINGS = {
    "WARREN_EXCEL_TEST_ROW_DELAY_S": "0.01",  # a 300-row export builds for about 3 s
    "WARREN_EXCEL_PROGRESS_INTERVAL_S": "0.05",
    "WARREN_EXCEL_RETRY_BACKOFF_S": "0.2",
    "WARREN_CAT_CONNECT_TIMEOUT_S": "2",
    "WARREN_LOG_LEVEL": "INFO",
}


@pytest.fixture
def ledger(postgres_url: str, tmp_path: Path) -> Iterator[Ledger]:
    """What the system recorded, read straight from PostgreSQL (not through the proxy)."""
    books = Ledger(postgres_url, tmp_path / "exports")
    yield books
    books.close()


@pytest.fixture
async def system(
    private_amqp_url: str, postgres_url: str, postgres_proxy: TcpProxy, tmp_path: Path
) -> AsyncIterator[System]:
    started = await System.start(
        private_amqp_url, postgres_proxy.database_url(postgres_url), tmp_path, **SETTINGS
    )
    try:
        yield started
    finally:
        await started.stop()
        # Every service's log lines, for a look after a failure (pytest keeps tmp_path).
        (tmp_path / "warren-up.log").write_text(started.up.output() + "\n")
