"""The database away: telling it from a refused statement, and waiting it out.

The first is transient: the same work succeeds once the database answers again, so
the edge answers ``503 database_unavailable`` and command consumers retry in place
(each service gives its ``WorkConsumer`` a :class:`RetryWhileUnavailable`).
The second (a constraint, a bad statement) fails the same way every time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY_S: Final = 0.1
MAX_DELAY_S: Final = 5.0
RETRY_FOR_S: Final = 300.0  # a command's retries in place; then it returns to its queue


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached, or dropped the connection.

    - ``OperationalError``: the driver's own word for it (connection refused or reset,
      server closed the connection, SQLite's "database is locked");
    - any ``DBAPIError`` that SQLAlchemy recognised as a disconnect
      (``connection_invalidated``);
    - ``DisconnectionError`` and the pool's ``TimeoutError`` (no connection to be had).
    """
    if isinstance(exc, (OperationalError, DisconnectionError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def next_delay(delay: float) -> float:
    """Capped exponential backoff: 0.1 s doubling to 5 s."""
    return min(delay * 2, MAX_DELAY_S)


async def while_unavailable(
    attempt: Callable[[], Awaitable[T]],
    *,
    for_s: float,
    worth_it: Callable[[], bool] = lambda: True,
) -> T:
    """``attempt()``, made again after a capped backoff while it fails because the
    database is away (and ``worth_it()`` still holds), for at most ``for_s`` seconds;
    then its error is raised.

    For work that must not be lost to a short outage: a run's outcome (the job is gone,
    the outcome exists only in this process), a command whose delivery is still held.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + for_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return await attempt()
        except Exception as exc:
            retry = database_unavailable(exc) and worth_it()
            if not retry or loop.time() + delay > give_up:
                raise
            log.warning("database unavailable; trying again",
                        extra={"retry_in_s": delay, "error": type(exc).__name__})
        await asyncio.sleep(delay)
        delay = next_delay(delay)


@dataclass(frozen=True, slots=True)
class RetryWhileUnavailable:
    """A command consumer's retry policy (``shared.messaging.work.RetryPolicy``): a handler
    that fails because the database is away runs again in place, for up to ``for_s``."""

    for_s: float = RETRY_FOR_S

    async def __call__(
        self, attempt: Callable[[], Awaitable[T]], *, worth_it: Callable[[], bool] = lambda: True
    ) -> T:
        return await while_unavailable(attempt, for_s=self.for_s, worth_it=worth_it)
