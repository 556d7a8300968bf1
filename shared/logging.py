"""Structured JSON logs on stdout, one line per record, with the current correlation id.

A correlation id follows one piece of work across processes: the edge sets it to a
command's envelope id when a client frame arrives, the publisher sends it as the AMQP
``correlation_id``, and the consumer that handles the message sets it again, so every
log line about that work, in any service, carries ``correlation_id``. Events published
while handling it carry it back to the edge.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, root.level))
