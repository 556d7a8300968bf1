"""Every publisher goes through the one producer (shared/messaging/producer.py): on a real
broker, the messages of the runner's runs queue and of the Excel worker's notifications
carry the properties and the correlation id that the rule gives them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractRobustConnection, DeliveryMode

from shared.logging import correlated
from shared.messaging import EVENTS_EXCHANGE, Address, Envelope
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import RUNNER_RUNS_QUEUE
from services.excel_worker.notify import RoutedPublisher
from services.runner.dispatch import RunQueue


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(amqp_url, name="warren-test-publish-path")
    async with connection:
        yield connection


async def test_a_queued_run_carries_the_id_of_the_command_that_asked_for_it(
    connection: AbstractRobustConnection,
) -> None:
    runs = RunQueue(connection)
    await runs.start()
    alice = Address.user("alice")
    run = Envelope(type="run.start", to=alice, sender=alice, data={"job": "hello"})
    with correlated("start-command-1"):
        await runs.put(run)
    channel = await connection.channel()
    queue = await channel.declare_queue(RUNNER_RUNS_QUEUE, passive=True)
    message = await queue.get(timeout=5)
    assert message.message_id == run.id
    assert message.correlation_id == "start-command-1"
    assert message.delivery_mode == DeliveryMode.PERSISTENT
    assert message.type == "run.start"
    await runs.close()


async def test_a_live_notification_is_correlated_with_its_task_and_says_if_it_was_routed(
    connection: AbstractRobustConnection,
) -> None:
    routed = RoutedPublisher(await Publisher.open(connection))
    alice = Address.user("alice")
    done = Envelope(type="excel.done", to=alice, sender=Address.service("excel"), data={})
    # Nobody holds alice's key: the broker returns the event, and the row stays pending.
    assert await routed.publish(done) is False

    channel = await connection.channel()
    socket_queue = await channel.declare_queue(exclusive=True)
    await socket_queue.bind(EVENTS_EXCHANGE, routing_key=alice.routing_key)
    with correlated("task-1"):
        assert await routed.publish(done) is True
    message = await socket_queue.get(timeout=5)
    assert message.message_id == done.id
    assert message.correlation_id == "task-1"
    assert message.delivery_mode == DeliveryMode.NOT_PERSISTENT
