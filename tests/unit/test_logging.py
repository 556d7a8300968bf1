from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from aio_pika.robust_channel import RobustChannel
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError, ConnectionClosed

from shared.logging import (
    BROKER_LIBRARIES,
    ConnectionLossFilter,
    CorrelationFilter,
    ReconnectNoiseFilter,
    correlated,
    correlation_id,
)


def record(**extra: object) -> logging.LogRecord:
    made = logging.LogRecord("t", logging.INFO, __file__, 1, "message", None, None)
    made.__dict__.update(extra)
    CorrelationFilter().filter(made)
    return made


def test_a_record_carries_the_current_correlation_id_only_inside_the_block() -> None:
    assert not hasattr(record(), "correlation_id")
    with correlated("abc"):
        assert record().correlation_id == "abc"  # type: ignore[attr-defined]
        assert record(correlation_id="explicit").correlation_id == "explicit"  # type: ignore[attr-defined]
    assert correlation_id() is None


async def test_tasks_started_inside_inherit_it_and_concurrent_blocks_do_not_mix() -> None:
    async def work(value: str) -> tuple[str | None, str | None]:
        with correlated(value):
            await asyncio.sleep(0)
            inner = await asyncio.create_task(asyncio.to_thread(correlation_id))
            return correlation_id(), inner

    assert list(await asyncio.gather(work("a"), work("b"))) == [("a", "a"), ("b", "b")]


# -- the broker's reconnect noise ------------------------------------------------------
# Records shaped as aio-pika and aiormq make them (logger, message template, arguments).

URL = '"amqp://guest:******@127.0.0.1:5672/vhost"'


@pytest.fixture(autouse=True)
def library_levels() -> Iterator[None]:
    """The broker libraries' loggers at WARNING, as configure_logging sets them."""
    loggers = [logging.getLogger(name) for name in BROKER_LIBRARIES]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, before):
        logger.setLevel(level)


def library_record(
    name: str, level: int, msg: str, *args: object, error: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def filtered(record: logging.LogRecord) -> logging.LogRecord | None:
    """The record as the handler writes it, or None if it is dropped."""
    for rule in (ReconnectNoiseFilter(), ConnectionLossFilter()):
        if not rule.filter(record):
            return None
    return record


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


FORCED = ConnectionClosed(320, "CONNECTION_FORCED - broker forced connection closure")
CLOSE_TEMPLATE = ('Unexpected connection close from remote "%s", '
                  "Connection.Close(reply_code=%r, reply_text=%r)")
ON_CLOSE = SimpleNamespace(callback=RobustChannel._on_close)


@pytest.mark.parametrize("record", [
    library_record("aiormq.connection", logging.ERROR, "error when creating transport: %r",
                   AMQPConnectionError(111, "Connection refused")),
    library_record("aio_pika.robust_connection", logging.WARNING,
                   'Connection attempt to "%s" failed: %s. Reconnecting after %r seconds.',
                   URL, ConnectionRefusedError(111, "Connection refused"), 1.0),
    library_record("aiormq.connection", logging.ERROR, CLOSE_TEMPLATE,
                   URL, 320, "CONNECTION_FORCED - broker forced connection closure"),
    library_record("aiormq.connection", logging.WARNING,
                   "Cancelling cause reader exited abnormally", error=raised(FORCED)),
    library_record("aio_pika.tools", logging.ERROR, "Callback %r error: %s: %s",
                   ON_CLOSE, "ChannelInvalidStateError",
                   ChannelInvalidStateError("No active transport in channel")),
    library_record("aio_pika.tools", logging.ERROR, "Callback %r error: %s: %s",
                   ON_CLOSE, "RuntimeError", RuntimeError("<Connection> closed")),
], ids=["transport", "attempt", "forced-close", "reader", "channel-on-close", "runtime"])
def test_known_reconnect_noise_is_dropped(record: logging.LogRecord) -> None:
    assert filtered(record) is None
    assert record.levelno == logging.DEBUG and record.exc_info is None


def test_a_failed_restore_is_a_warning_since_it_is_retried() -> None:
    record = library_record(
        "aio_pika.robust_connection", logging.ERROR,
        "Reconnect attempt failed %s due to %s: %s. Retrying after %r seconds.",
        URL, "ChannelNotFoundEntity", "NOT_FOUND", 1.0,
    )
    assert filtered(record) is record
    assert (record.levelno, record.levelname) == (logging.WARNING, "WARNING")


@pytest.mark.parametrize("record", [
    # A close the broker did not announce as a shutdown: a fault.
    library_record("aiormq.connection", logging.ERROR, CLOSE_TEMPLATE,
                   URL, 501, "FRAME_ERROR - type 3, first 16 octets"),
    # The reader failing on something else than a lost connection (a malformed frame).
    library_record("aiormq.connection", logging.WARNING,
                   "Cancelling cause reader exited abnormally",
                   error=raised(ValueError("bad frame"))),
    # Another callback failing is a bug somewhere.
    library_record("aio_pika.tools", logging.ERROR, "Callback %r error: %s: %s",
                   SimpleNamespace(callback=print), "RuntimeError", RuntimeError("boom")),
    library_record("aiormq.channel", logging.ERROR, "Unexpected confirmation frame %r from broker",
                   "frame"),
], ids=["other-close", "bad-frame", "other-callback", "other-record"])
def test_other_library_records_keep_their_level_and_traceback(record: logging.LogRecord) -> None:
    level, exc_info = record.levelno, record.exc_info
    assert filtered(record) is record
    assert (record.levelno, record.exc_info) == (level, exc_info)


def test_a_warning_about_a_lost_connection_has_no_traceback() -> None:
    cause = raised(ChannelInvalidStateError("<RobustChannel> closed"))
    record = library_record("services.runner.process", logging.WARNING,
                            "output publish failed; retrying", error=cause)
    assert filtered(record) is record
    assert record.exc_info is None
    assert getattr(record, "error") == "ChannelInvalidStateError: <RobustChannel> closed"


def test_errors_and_other_exceptions_keep_their_traceback() -> None:
    lost = raised(ConnectionResetError(104, "reset"))
    error = library_record("shared.messaging.work", logging.ERROR, "command failed", error=lost)
    bug = library_record("shared.messaging.work", logging.WARNING, "odd",
                         error=raised(KeyError("k")))
    for record in (error, bug):
        exc_info = record.exc_info
        assert filtered(record) is record and record.exc_info == exc_info
