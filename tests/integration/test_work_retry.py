"""A command handler that meets the database away runs again in place, on the real broker:
the message is neither returned to the queue nor dead-lettered while the failure lasts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelInvalidStateError
from sqlalchemy.exc import OperationalError

from shared.messaging import Address, Command, Envelope
from shared.messaging.broker import BrokerUnavailable, Publisher, connect
from shared.messaging.names import dead_letter_queue_name, work_queue_name
from shared.db.outage import RETRY_FOR_S, RetryWhileUnavailable
from shared.messaging.work import WorkConsumer
from tests.support.rabbit import depth

WAIT_S = 10.0


def outage() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(amqp_url, name="warren-test-work-retry")
    async with connection:
        yield connection





class Calls:
    """Each handler call's ``redelivered`` flag; the handler fails while ``failing`` says so."""

    def __init__(self, failing: Callable[[int], BaseException | None]) -> None:
        self.redelivered: list[bool] = []
        self.succeeded = asyncio.Event()
        self._failing = failing

    async def handle(self, _envelope: Envelope, message: AbstractIncomingMessage) -> None:
        self.redelivered.append(bool(message.redelivered))
        failure = self._failing(len(self.redelivered))
        if failure is not None:
            raise failure
        self.succeeded.set()


async def run_one(
    connection: AbstractRobustConnection, publisher: Publisher, calls: Calls,
    retry_for_s: float | None = RETRY_FOR_S,
) -> None:
    """One command through a consumer that retries database outages for ``retry_for_s``,
    or has no retry policy (None), as cat_relay's."""
    retry = None if retry_for_s is None else RetryWhileUnavailable(retry_for_s)
    consumer = WorkConsumer(connection, Command.RUN_STOP, calls.handle, prefetch=1, retry=retry)
    await consumer.start()
    try:
        me = Address.user("alice")
        await publisher.publish_command(
            Envelope(type=Command.RUN_STOP.value, to=me, sender=me, data={}))
        await asyncio.wait_for(calls.succeeded.wait(), WAIT_S)
        await consumer.stop_consuming()
        assert await consumer.drain(WAIT_S)
    finally:
        await consumer.close()


async def test_a_database_outage_is_retried_in_place_then_acked(
    connection: AbstractRobustConnection, publisher: Publisher
) -> None:
    calls = Calls(lambda n: outage() if n <= 3 else None)
    await run_one(connection, publisher, calls)
    # Four runs of one delivery: never returned to the queue in between.
    assert calls.redelivered == [False, False, False, False]
    queue = work_queue_name(Command.RUN_STOP)
    assert await depth(connection, queue) == 0
    assert await depth(connection, dead_letter_queue_name(queue)) == 0


async def test_other_failures_return_the_message_to_the_queue_at_once(
    connection: AbstractRobustConnection, publisher: Publisher
) -> None:
    calls = Calls(lambda n: RuntimeError("a bug") if n == 1 else None)
    await run_one(connection, publisher, calls)
    assert calls.redelivered == [False, True]


async def test_a_failure_outlasting_the_retry_window_returns_the_message_to_the_queue(
    connection: AbstractRobustConnection, publisher: Publisher
) -> None:
    calls = Calls(lambda n: outage() if n <= 3 else None)
    await run_one(connection, publisher, calls, retry_for_s=0.25)
    # Runs at 0 s and 0.1 s; the next, at 0.3 s, would be past the window: back to the
    # queue. The redelivery gets a window of its own, and its retry succeeds.
    assert calls.redelivered == [False, False, True, True]


async def test_a_consumer_without_a_retry_policy_returns_the_message_at_once(
    connection: AbstractRobustConnection, publisher: Publisher
) -> None:
    # cat_relay's: an ask is never run twice in place.
    calls = Calls(lambda n: outage() if n == 1 else None)
    await run_one(connection, publisher, calls, retry_for_s=None)
    assert calls.redelivered == [False, True]


async def test_a_broker_failure_is_not_retried_in_place(
    connection: AbstractRobustConnection, publisher: Publisher
) -> None:
    calls = Calls(lambda n: BrokerUnavailable("not confirmed") if n == 1 else None)
    await run_one(connection, publisher, calls)
    assert calls.redelivered == [False, True]


@pytest.mark.parametrize(("failure", "logged"), [
    # Expected while the broker restarts: its channels come back one by one.
    (BrokerUnavailable("not confirmed"), ("WARNING", "command met the broker away")),
    (ChannelInvalidStateError("<Channel> closed"), ("WARNING", "command met the broker away")),
    (RuntimeError("a bug"), ("ERROR", "command failed")),
], ids=["broker-unavailable", "channel-closed", "bug"])
async def test_only_a_failure_that_needs_a_human_is_an_error(
    connection: AbstractRobustConnection, publisher: Publisher,
    caplog: pytest.LogCaptureFixture, failure: Exception, logged: tuple[str, str],
) -> None:
    calls = Calls(lambda n: failure if n == 1 else None)
    with caplog.at_level(logging.WARNING, "shared.messaging.work"):
        await run_one(connection, publisher, calls)
    assert calls.redelivered == [False, True]
    records = [r for r in caplog.records if r.name == "shared.messaging.work"]
    assert [(r.levelname, r.getMessage().split(";")[0]) for r in records] == [logged]
