"""A broker outage in the logs: one WARNING when the connection is lost, one ERROR once it
outlasts ``WARREN_BROKER_OUTAGE_ALERT_S``, one INFO when it is back, and none of
aio-pika's reconnect noise (shared/messaging/broker.py, shared/logging.py).

The broker is reached through a TCP proxy that the test cuts: the machine's broker is
never touched. The records are those the services' handler writes (its filters applied).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared.logging import BROKER_LIBRARIES, ConnectionLossFilter, ReconnectNoiseFilter
from shared.messaging.broker import connect
from tests.support.tcp_proxy import TcpProxy

WAIT_S = 30.0
BROKER_LOG = "shared.messaging.broker"


class Written(logging.Handler):
    """Keeps what a service's log handler would write; a test awaits a record in it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ReconnectNoiseFilter())
        self.addFilter(ConnectionLossFilter())
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    async def wait_for(
        self, wanted: Callable[[logging.LogRecord], bool], after: int = 0
    ) -> logging.LogRecord:
        """The first record from index ``after`` on that is ``wanted``."""
        async def seen() -> logging.LogRecord:
            while True:
                for record in self.records[after:]:
                    if wanted(record):
                        return record
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(seen(), WAIT_S)


@pytest.fixture
def written() -> Iterator[Written]:
    """Records at the services' levels (configure_logging): INFO, the libraries at WARNING."""
    handler = Written()
    root = logging.getLogger()
    libraries = [logging.getLogger(name) for name in BROKER_LIBRARIES]
    levels = [root.level, *(logger.level for logger in libraries)]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for logger in libraries:
        logger.setLevel(logging.WARNING)
    yield handler
    root.removeHandler(handler)
    for logger, level in zip([root, *libraries], levels):
        logger.setLevel(level)


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    yield proxy
    await proxy.close()


def through(proxy: TcpProxy, amqp_url: str) -> str:
    parts = urllib.parse.urlsplit(amqp_url)
    credentials = parts.netloc.rpartition("@")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}"))


def is_broker(level: int, message: str) -> Callable[[logging.LogRecord], bool]:
    return lambda r: r.name == BROKER_LOG and r.levelno == level and message in r.getMessage()


async def consuming(connection: AbstractRobustConnection) -> None:
    """A robust channel with a consumer, as every service has: restored after the outage."""
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)

    async def ignore(_message: AbstractIncomingMessage) -> None:
        pass

    await queue.consume(ignore, no_ack=True)


async def test_an_outage_is_logged_once_per_state_change_without_noise(
    amqp_url: str, proxy: TcpProxy, written: Written
) -> None:
    connection = await connect(
        through(proxy, amqp_url), name="warren-test-watch", reconnect_interval=0.1,
        outage_alert_s=0.5,
    )
    try:
        await consuming(connection)
        start = len(written.records)

        proxy.cut()
        lost = await written.wait_for(is_broker(logging.WARNING, "broker connection lost"), start)
        assert lost.connection == "warren-test-watch"  # type: ignore[attr-defined]
        assert lost.reason  # type: ignore[attr-defined]
        # Still cut after the alert delay: one ERROR, for a human.
        await written.wait_for(is_broker(logging.ERROR, "broker unreachable for 0.5 s"), start)
        proxy.restore()
        back = await written.wait_for(is_broker(logging.INFO, "broker reconnected after"), start)
        assert back.outage_s > 0  # type: ignore[attr-defined]

        during = written.records[start:]
        # The failed attempts of the outage, the library's tracebacks: none written.
        assert [r.getMessage() for r in during if r.levelno >= logging.ERROR] == [
            "broker unreachable for 0.5 s; still reconnecting"
        ]
        assert [r.getMessage() for r in during if r.exc_info] == []
        assert [(r.levelname, r.getMessage().partition(" after")[0])
                for r in during if r.name == BROKER_LOG] == [
            ("WARNING", "broker connection lost; reconnecting"),
            ("ERROR", "broker unreachable for 0.5 s; still reconnecting"),
            ("INFO", "broker reconnected"),
        ]

        # A second outage is logged again, on its own.
        again = len(written.records)
        proxy.cut()
        await written.wait_for(is_broker(logging.WARNING, "broker connection lost"), again)
        proxy.restore()
        await written.wait_for(is_broker(logging.INFO, "broker reconnected after"), again)
    finally:
        end = len(written.records)
        await connection.close()
    # Closing it on purpose is no outage.
    assert [r for r in written.records[end:] if r.name == BROKER_LOG] == []
