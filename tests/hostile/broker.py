"""Raw access to the broker for hostile tests: publish any bytes where a service reads,
and watch what comes out, results on ``warren.events`` and dead letters alike."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from shared.messaging import Command, user_key
from shared.messaging.broker import connect, declare_exchanges
from shared.messaging.names import dead_letter_queue_name, work_queue_name

#: Where each consumer's rejects go: the edge's dead letters, and each work queue's.
EVENTS_DEAD = "warren.events.dead"
COMMAND_DEAD = {c: dead_letter_queue_name(work_queue_name(c)) for c in Command}

#: The keys in a result event's data that name the command it answers.
ANSWER_KEYS = ("ask_id", "command_id", "run_id", "task_id")


class Keyed:
    """Futures by key that may be asked for before or after their value arrives."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}

    def _future(self, key: str) -> asyncio.Future[Any]:
        future = self._futures.get(key)
        if future is None:
            future = self._futures[key] = asyncio.get_running_loop().create_future()
        return future

    def expect(self, key: str) -> asyncio.Future[Any]:
        return self._future(key)

    def resolve(self, key: str, value: Any) -> None:
        future = self._future(key)
        if not future.done():
            future.set_result(value)


class RawBroker:
    """One connection of the test's own: raw publishes, a results tap, dead-letter readers."""

    def __init__(
        self, connection: AbstractRobustConnection, channel: AbstractChannel,
        events: AbstractExchange, commands: AbstractExchange,
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.events = events
        self.commands = commands
        # Final results (not progress or output) by the id they answer.
        self.results = Keyed()
        # Dead letters by queue, then by message id.
        self.dead: dict[str, Keyed] = {}

    @classmethod
    async def open(cls, amqp_url: str) -> RawBroker:
        connection = await connect(amqp_url, name="warren-test-hostile")
        channel = await connection.channel()
        events, commands = await declare_exchanges(channel)
        return cls(connection, channel, events, commands)

    async def close(self) -> None:
        await self.connection.close()

    # -- publishing ------------------------------------------------------------

    async def publish_event(self, body: bytes, routing_key: str, message_id: str) -> None:
        await self.events.publish(
            aio_pika.Message(body, message_id=message_id), routing_key=routing_key
        )

    async def publish_command(self, body: bytes, command: Command, message_id: str) -> None:
        """As the edge publishes a command, but with any body: persistent and mandatory
        (the work queue must exist)."""
        message = aio_pika.Message(
            body, message_id=message_id, correlation_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.commands.publish(message, routing_key=command.value, mandatory=True)

    # -- watching --------------------------------------------------------------

    async def tap_results(self, users: Iterable[str]) -> None:
        """Collect the services' final answers to ``users``: a reply, error, failure,
        completion or queued run, keyed by the command id it names."""
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        for user in users:
            await queue.bind(self.events, routing_key=user_key(user))

        async def on_event(message: AbstractIncomingMessage) -> None:
            await message.ack()
            event = orjson.loads(message.body)
            if event.get("type") in {"chat.token", "run.started", "run.output", "excel.progress"}:
                return
            data = event.get("data", {})
            for key in ANSWER_KEYS:
                if isinstance(data.get(key), str):
                    self.results.resolve(data[key], event)

        await queue.consume(on_event)

    async def watch_dead_letters(self, queues: Iterable[str]) -> None:
        """Collect every message dead-lettered to ``queues``, keyed by message id."""
        for name in queues:
            queue = await self.channel.declare_queue(name, durable=True)
            keyed = self.dead[name] = Keyed()

            async def on_dead(message: AbstractIncomingMessage, keyed: Keyed = keyed) -> None:
                await message.ack()
                keyed.resolve(message.message_id or "", message.body)

            await queue.consume(on_dead)
