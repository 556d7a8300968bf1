"""Structured JSON logs on stdout, one line per record, with the current correlation id.

A correlation id follows one piece of work across processes: the edge sets it to a
command's envelope id when a client frame arrives, the publisher sends it as the AMQP
``correlation_id``, and the consumer that handles the message sets it again, so every
log line about that work, in any service, carries ``correlation_id``. Events published
while handling it carry it back to the edge.

The broker going away and coming back is expected (docs/reliability.md, "What is logged
at which level"): ``shared/messaging/broker.py`` logs each state change once, so the
client library's own records of it are demoted here (:class:`ReconnectNoiseFilter`), and
a warning whose error is a lost connection carries a one-line summary instead of a
traceback (:class:`ConnectionLossFilter`). The library is configured, not patched.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from aio_pika.exceptions import ChannelInvalidStateError
from pythonjsonlogger.json import JsonFormatter

_correlation: ContextVar[str | None] = ContextVar("warren_correlation_id", default=None)


def correlation_id() -> str | None:
    """The id of the work this task is doing, if any."""
    return _correlation.get()


@contextmanager
def correlated(value: str | None) -> Iterator[None]:
    """Within the block (and tasks created in it), logs and publishes carry ``value``."""
    token = _correlation.set(value)
    try:
        yield
    finally:
        _correlation.reset(token)


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id`` to a record made while one is set (an explicit one wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        value = _correlation.get()
        if value is not None and not hasattr(record, "correlation_id"):
            record.correlation_id = value
        return True


BROKER_LIBRARIES: Final = ("aio_pika", "aiormq")
# AMQP reply code of a connection the broker closed on purpose: it is shutting down, or
# an operator closed the connection. Other codes (frame errors, internal errors) are faults.
CONNECTION_FORCED: Final = 320
# An exception of one of these types says a connection went away: where it surfaced
# (a publish, an ack) tells nothing more.
CONNECTION_LOSS: Final = (ConnectionError, ChannelInvalidStateError)


def _demote(record: logging.LogRecord, level: int) -> bool:
    """``record`` at ``level``, without its traceback; False if its logger would drop it."""
    record.levelno = level
    record.levelname = logging.getLevelName(level)
    record.exc_info = None
    record.exc_text = None
    return logging.getLogger(record.name).isEnabledFor(level)


def _reconnect_noise_level(record: logging.LogRecord) -> int | None:
    """The level a record of aio-pika's or aiormq's about a reconnect deserves, or None
    for a record that is not one of those (it keeps its level).

    Each record is recognised by its logger and its message template, which do not
    change with the connection or the exception."""
    args = record.args if isinstance(record.args, tuple) else ()
    error = record.exc_info[1] if record.exc_info else None
    match record.name, record.msg:
        case "aiormq.connection", "error when creating transport: %r":
            # One per failed attempt, and aio-pika logs the attempt too.
            return logging.DEBUG
        case "aio_pika.robust_connection", str(text) if text.startswith("Connection attempt to"):
            return logging.DEBUG
        case "aiormq.connection", str(text) if text.startswith("Unexpected connection close"):
            forced = len(args) > 1 and args[1] == CONNECTION_FORCED
            return logging.DEBUG if forced else None
        case "aiormq.connection", "Cancelling cause reader exited abnormally":
            return logging.DEBUG if isinstance(error, CONNECTION_LOSS) else None
        case "aio_pika.tools", "Callback %r error: %s: %s":
            # A robust channel's close handler meets its connection already gone.
            callback = getattr(args[0], "callback", None) if args else None
            on_close = getattr(callback, "__qualname__", "") == "RobustChannel._on_close"
            lost = len(args) > 2 and isinstance(args[2], (RuntimeError, ConnectionError))
            return logging.DEBUG if on_close and lost else None
        case "aio_pika.robust_connection", str(text) if text.startswith("Reconnect attempt failed"):
            # Retried; an outage that outlasts WARREN_BROKER_OUTAGE_ALERT_S is an ERROR.
            return logging.WARNING
    return None


class ReconnectNoiseFilter(logging.Filter):
    """Demotes aio-pika's and aiormq's records about a connection lost and restored.

    Known noise (a failed attempt, the broker's shutdown notice, a robust channel's close
    handler failing for want of a connection) goes to DEBUG, dropped at Warren's levels;
    a failed restore, retried by itself, to WARNING. Everything else passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(BROKER_LIBRARIES):
            return True
        level = _reconnect_noise_level(record)
        if level is None or level >= record.levelno:
            return True
        return _demote(record, level)


class ConnectionLossFilter(logging.Filter):
    """A WARNING (or lower) whose exception is a lost connection is written without the
    traceback, with ``error`` saying what the exception was. ERROR records keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING or not record.exc_info:
            return True
        error = record.exc_info[1]
        if isinstance(error, CONNECTION_LOSS):
            if not hasattr(record, "error"):
                name = type(error).__name__
                record.error = f"{name}: {error}" if str(error) else name
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(CorrelationFilter())
    handler.addFilter(ReconnectNoiseFilter())
    handler.addFilter(ConnectionLossFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, root.level))
