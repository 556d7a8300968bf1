"""Telling the database away from a refused statement, waiting it out, and what the edge
makes of it (the command consumers' retries: tests/integration/test_work_retry.py)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.db.outage import MAX_DELAY_S, database_unavailable, next_delay, while_unavailable
from shared.messaging.broker import BrokerUnavailable
from services.ws_edge.errors import DATABASE_UNAVAILABLE, INTERNAL, ErrorSpec, describe


def outage() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def disconnect() -> DBAPIError:
    return DBAPIError("SELECT 1", {}, OSError("reset"), connection_invalidated=True)


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (outage(), True),
        (disconnect(), True),
        (PoolTimeout("QueuePool limit reached"), True),
        (DBAPIError("SELECT 1", {}, OSError("x")), False),
        (IntegrityError("INSERT", {}, ValueError("duplicate key")), False),
        (ProgrammingError("SELEC 1", {}, ValueError("syntax error")), False),
        (ConnectionRefusedError("not the database"), False),
        (BrokerUnavailable("publish not confirmed"), False),
        (RuntimeError("x"), False),
    ],
)
def test_database_unavailable(exc: BaseException, unavailable: bool) -> None:
    assert database_unavailable(exc) is unavailable


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [0.1]
    for _ in range(8):
        delays.append(next_delay(delays[-1]))
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert max(delays) == MAX_DELAY_S == delays[-1]


async def test_while_unavailable_tries_again_until_the_database_answers() -> None:
    outcomes: list[BaseException | str] = [outage(), disconnect(), "done"]

    async def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert await while_unavailable(attempt, for_s=5) == "done"
    assert outcomes == []


async def test_while_unavailable_gives_up_after_its_window() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise outage()

    with pytest.raises(OperationalError):
        await while_unavailable(attempt, for_s=0.25)
    assert calls == 2  # at 0 s and 0.1 s; the next would be at 0.3 s


async def test_while_unavailable_raises_other_errors_at_once() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise IntegrityError("INSERT", {}, ValueError("duplicate key"))

    with pytest.raises(IntegrityError):
        await while_unavailable(attempt, for_s=5)
    assert calls == 1


@pytest.mark.parametrize("exc", [outage(), disconnect(), PoolTimeout("x")])
def test_the_edge_answers_503_database_unavailable_with_a_fixed_message(
    exc: BaseException,
) -> None:
    spec = describe(exc)
    assert spec == DATABASE_UNAVAILABLE == ErrorSpec(
        503, "database_unavailable", "the database is unavailable; retry later"
    )
    assert "SELECT" not in (spec.message or "")  # the statement stays in the logs


def test_other_database_errors_stay_internal() -> None:
    # SQLAlchemy errors carry a ``code`` of their own ("gkpj"): it must not become ours.
    assert describe(IntegrityError("INSERT", {}, ValueError("duplicate key"))) == INTERNAL
