"""Waiting for a log record of the process under test, as an event."""

from __future__ import annotations

import asyncio
import logging


class LogSeen(logging.Handler):
    """Sets ``seen`` when a record whose message is ``message`` is logged."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.seen.set()
