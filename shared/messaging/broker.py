"""Connecting to RabbitMQ, declaring Warren's topology, and publishing envelopes to it
(through the one producer, ``shared/messaging/producer.py``).

The connection is aio-pika's robust connection: it reconnects by itself and its
robust channels re-declare exchanges, queues, bindings and consumers. Its state changes
are logged here, once each (:class:`ConnectionWatch`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from shared.config import (
    DEFAULT_BROKER_OUTAGE_ALERT_S,
    HistorySettings,
    amqp_urls,
    without_password,
)
from shared.messaging.envelope import Envelope
from shared.messaging.failover import MAX_RECONNECT_INTERVAL_S, FailoverConnection
from shared.messaging.names import (
    CHAT_CLAIMS_QUEUE,
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    EDGE_EXCHANGE,
    EVENTS_DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    HISTORY_EXCHANGE,
    HISTORY_STREAM,
    Command,
    chat_session_queue_name,
    command_key,
    dead_letter_queue_name,
    work_queue_name,
)
from shared.messaging.producer import PUBLISH_TIMEOUT_S
from shared.messaging.producer import BrokerUnavailable as BrokerUnavailable
from shared.messaging.producer import MessageKind, Producer
from shared.messaging.producer import Unroutable as Unroutable

log = logging.getLogger(__name__)

WORK_QUEUE_DELIVERY_LIMIT: Final = 5
CHAT_SESSION_EXPIRES_MS: Final = 3_600_000


async def connect(
    url: str | Sequence[str],
    *,
    name: str,
    timeout: float = 10.0,
    reconnect_interval: float = 1.0,
    max_reconnect_interval: float = MAX_RECONNECT_INTERVAL_S,
    outage_alert_s: float = DEFAULT_BROKER_OUTAGE_ALERT_S,
) -> AbstractRobustConnection:
    """Open a robust connection, failing fast when the broker is not there at start-up.

    ``url``: one broker address, or several (a sequence, or comma-separated as
    ``WARREN_AMQP_URL`` may hold them), tried in turn: start-up fails when none answers.
    Each gets ``timeout`` divided by their number to answer.

    Once open, aio-pika reconnects by itself, then restores channels, queues, bindings
    and consumers. A reconnection tries the address that answered last, then the others
    in turn; after a round in which none answered it waits ``reconnect_interval``
    seconds, doubling after each such round up to ``max_reconnect_interval``
    (``shared/messaging/failover.py``). A loss is logged at WARNING, the reconnection at
    INFO, and an outage still going on after ``outage_alert_s`` at ERROR
    (``WARREN_BROKER_OUTAGE_ALERT_S``).
    """
    addresses = amqp_urls(url) if isinstance(url, str) else tuple(url)
    connection = FailoverConnection(
        addresses,
        client_properties={"connection_name": name},
        reconnect_interval=reconnect_interval,
        max_reconnect_interval=max_reconnect_interval,
    )
    try:
        await asyncio.wait_for(connection.connect(timeout / len(addresses)), timeout)
    except (OSError, asyncio.TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        await connection.close()
        failures = connection.failures.items()
        why = "; ".join(
            f"{without_password(str(at))}: {error!r}" for at, error in failures
        ) or repr(exc)
        where = ", ".join(without_password(address) for address in addresses)
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {where}: {why}") from exc
    ConnectionWatch(connection, name=name, alert_after_s=outage_alert_s)
    return connection


class ConnectionWatch:
    """Logs a robust connection's state changes, once each.

    The broker going away and coming back is expected: the loss is a WARNING and the
    reconnection an INFO record, however many attempts it took (aio-pika's own records
    of them are demoted in ``shared/logging.py``). An outage still going on after
    ``alert_after_s`` needs a human: one ERROR record, once per outage.
    """

    def __init__(
        self, connection: AbstractRobustConnection, *, name: str, alert_after_s: float
    ) -> None:
        self._connection = connection
        self._name = name
        self._alert_after_s = alert_after_s
        self._loop = asyncio.get_running_loop()
        self._lost_at: float | None = None
        self._alert: asyncio.TimerHandle | None = None
        # Held strongly by the connection's callback collections, as long as it lives.
        connection.close_callbacks.add(self._on_close)
        connection.reconnect_callbacks.add(self._on_reconnect)

    def _on_close(self, _connection: object, reason: BaseException | None) -> None:
        if self._connection.close_called:  # closed on purpose, at shutdown
            self._cancel_alert()
            return
        if self._lost_at is not None:  # a restore that failed: the same outage
            return
        self._lost_at = self._loop.time()
        log.warning(
            "broker connection lost; reconnecting",
            extra={"connection": self._name, "reason": _describe(reason),
                   "broker": broker_address(self._connection)},
        )
        self._alert = self._loop.call_later(self._alert_after_s, self._still_away)

    def _still_away(self) -> None:
        self._alert = None
        log.error(
            "broker unreachable for %g s; still reconnecting",
            self._alert_after_s,
            extra={"connection": self._name, "brokers": broker_addresses(self._connection)},
        )

    def _on_reconnect(self, _connection: object) -> None:
        if self._lost_at is None:
            return
        outage_s = self._loop.time() - self._lost_at
        self._lost_at = None
        self._cancel_alert()
        log.info(
            "broker reconnected after %.1f s",
            outage_s,
            extra={"connection": self._name, "outage_s": round(outage_s, 3),
                   "broker": broker_address(self._connection)},
        )

    def _cancel_alert(self) -> None:
        if self._alert is not None:
            self._alert.cancel()
            self._alert = None


def broker_address(connection: AbstractRobustConnection) -> str | None:
    """The address the connection is on, or was last on, as logs may show it: with a list
    of addresses it says which node was lost and which one took over."""
    url = getattr(connection, "url", None)
    return None if url is None else without_password(str(url))


def broker_addresses(connection: AbstractRobustConnection) -> str | None:
    """Every address the connection tries in turn, as logs may show them."""
    if isinstance(connection, FailoverConnection):
        return ", ".join(without_password(str(url)) for url in connection.addresses)
    return broker_address(connection)


def _describe(reason: BaseException | None) -> str | None:
    if reason is None:
        return None
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


async def declare_exchanges(channel: AbstractChannel) -> tuple[AbstractExchange, AbstractExchange]:
    """Declare the events and commands exchanges, the kept events' exchange that feeds
    both the events exchange and the history stream, and the dead-letter plumbing."""
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    kept = await channel.declare_exchange(
        HISTORY_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await events.bind(kept, routing_key="#")
    commands = await channel.declare_exchange(
        COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    await _declare_dead_letter_queue(channel, dlx, EVENTS_DEAD_LETTER_QUEUE)
    return events, commands


async def declare_edge_exchange(
    channel: AbstractChannel, events: AbstractExchange
) -> AbstractExchange:
    """Declare the exchange edges bind their queues to, fed all of ``events``."""
    edges = await channel.declare_exchange(
        EDGE_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    await edges.bind(events, routing_key="#")
    return edges


async def declare_history_stream(
    connection: AbstractRobustConnection, history: HistorySettings
) -> None:
    """Declare the history stream and bind it to the kept events' exchange.

    A stream's arguments cannot change once it exists: when it was declared with other
    values (another edge's settings), it is used as it is, with a warning; a policy is
    how a running system changes its retention (docs/protocol.md 17.1).
    """
    arguments: dict[str, str | int] = {
        "x-queue-type": "stream",
        "x-max-age": f"{history.max_age_s}s",
        "x-max-length-bytes": history.max_bytes,
        "x-stream-max-segment-size-bytes": history.segment_bytes,
    }
    # Plain channels: a refused declaration closes its channel, and none of this is to
    # be re-declared by aio-pika after a reconnect (the stream is durable).
    channel = await connection.channel()
    try:
        try:
            stream = await channel.declare_queue(
                HISTORY_STREAM, durable=True, arguments=arguments, robust=False
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            log.warning(
                "the history stream exists with other arguments; using it as it is",
                extra={"stream": HISTORY_STREAM, "wanted": arguments, "error": str(exc)},
            )
            channel = await connection.channel()
            stream = await channel.declare_queue(HISTORY_STREAM, passive=True, robust=False)
        kept = await channel.declare_exchange(
            HISTORY_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True, robust=False
        )
        await stream.bind(kept, routing_key="#", robust=False)
    finally:
        if not channel.is_closed:
            await channel.close()


async def _declare_dead_letter_queue(
    channel: AbstractChannel, dlx: AbstractExchange, name: str
) -> None:
    """Declare a durable classic queue for dead letters, bound to ``dlx``: best effort.

    On a cluster the queue lives on one node, and while that node is down the broker
    refuses to declare or bind it (``NOT_FOUND``), which closes the channel it was asked
    on. So it is declared on a short-lived channel of the same connection, not the
    caller's, and a refusal is logged, not raised: a service starts, and reconnects,
    while that node is down, and what would be dead-lettered to the queue meanwhile is
    dropped (docs/reliability.md 2.6). Once per process, not again by aio-pika after a
    reconnect: the queue is durable, so nothing needs it declared again.
    """
    own = await (await channel.get_underlay_channel()).connection.channel()
    try:
        await own.queue_declare(name, durable=True)
        await own.queue_bind(name, dlx.name, routing_key=name)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        log.warning(
            "a dead-letter queue is unavailable (its node is down?); its dead letters are "
            "dropped until it is back",
            extra={"queue": name, "error": str(exc)},
        )
    finally:
        if not own.is_closed:
            await own.close()


def edge_queue_arguments() -> dict[str, str]:
    """Arguments of an edge's event queue: poison events are dead-lettered, not dropped."""
    return {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": EVENTS_DEAD_LETTER_QUEUE,
    }


async def declare_work_queue(channel: AbstractChannel, command: Command | str) -> AbstractQueue:
    """Declare the durable quorum work queue for one command type, with its dead-letter queue.

    ``chat.ask`` has a single active consumer, so asks leave it in the order they
    arrived (cat_relay then spreads the work over its replicas per user).
    """
    queue = await declare_quorum_queue(
        channel, work_queue_name(command), single_active_consumer=command == Command.CHAT_ASK
    )
    commands = await channel.declare_exchange(
        COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await queue.bind(commands, routing_key=command_key(command))
    return queue


async def declare_quorum_queue(
    channel: AbstractChannel, name: str, *, single_active_consumer: bool = False
) -> AbstractQueue:
    """Declare a durable quorum queue for work, with its dead-letter queue ``<name>.dead``.

    The quorum queue's delivery limit ends redelivery loops: a message that keeps
    failing goes to the dead-letter queue instead of being requeued forever.

    How many nodes hold a replica is left to RabbitMQ, which gives a new quorum queue
    one on each node up to its ``quorum_cluster_size`` (3 by default): three on a
    three-node cluster, as ``tests/cluster`` checks. ``x-quorum-initial-group-size``
    is not given on purpose: RabbitMQ counts it in the queue's identity, so adding or
    changing it would refuse every later declaration of a queue that already exists
    (docs/deploy.md, "A RabbitMQ cluster").
    """
    dead_name = dead_letter_queue_name(name)
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    await _declare_dead_letter_queue(channel, dlx, dead_name)
    return await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": WORK_QUEUE_DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": dead_name,
            **({"x-single-active-consumer": True} if single_active_consumer else {}),
        },
    )


async def declare_session_queue(channel: AbstractRobustChannel, user_id: str) -> AbstractQueue:
    """Declare one user's chat session queue: a quorum queue, one active consumer at a time.

    Single active consumer makes one relay replica answer the user's asks, one by one
    and in order (docs/cat_relay.md). A quorum queue keeps the asks and the choice of
    consumer on a cluster when one node stops. The queue deletes itself after an hour
    without consumers; rejected asks go to the ``chat.ask`` dead letters. No delivery
    limit: an ask that comes back is answered ``interrupted``, never asked again, so it
    cannot loop, and one that cannot be answered while the broker is unsettled must not
    be dropped. Not re-declared by aio-pika after a reconnect: the relay takes sessions
    again through claims.
    """
    dead = dead_letter_queue_name(work_queue_name(Command.CHAT_ASK))
    return await channel.declare_queue(
        chat_session_queue_name(user_id),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            "x-expires": CHAT_SESSION_EXPIRES_MS,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": dead,
        },
        robust=False,
    )


async def declare_chat_claims_queue(channel: AbstractChannel) -> AbstractQueue:
    """Declare the quorum queue of chat session claims, which every relay replica consumes.

    Without a delivery limit: a claim is held unacknowledged by the replica that owns
    the session and returns to the queue each time an owner stops, however often; a
    claim dropped would leave its session's asks with nobody to take them. A quorum
    queue, so that a relay reconnecting while one node is down can declare it again.
    """
    return await channel.declare_queue(
        CHAT_CLAIMS_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
    )


class Publisher:
    """Publishes envelopes to Warren's exchanges through one :class:`Producer` on one
    long-lived channel (properties, confirms, errors and the correlation id rule are
    the producer's)."""

    def __init__(
        self,
        producer: Producer,
        events: AbstractExchange,
        commands: AbstractExchange,
        kept: AbstractExchange,
        history: HistorySettings,
    ) -> None:
        self._producer = producer
        self._events = events
        self._commands = commands
        self._kept = kept
        self._history = history

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, history: HistorySettings = HistorySettings()
    ) -> Publisher:
        """``history`` says which event types are kept: the process's
        ``CommonSettings.history``, the same in every process that publishes."""
        producer = await Producer.open(connection)
        events, commands = await declare_exchanges(producer.channel)
        kept = await producer.channel.get_exchange(HISTORY_EXCHANGE, ensure=False)
        return cls(producer, events, commands, kept, history)

    async def publish_event(
        self, envelope: Envelope, *, timeout: float = PUBLISH_TIMEOUT_S, mandatory: bool = False
    ) -> None:
        """Publish under the envelope's destination key: to ``warren.events.kept`` if its
        type is kept (which forwards it to ``warren.events`` and the history stream), else
        to ``warren.events``.

        ``mandatory``: raise :class:`Unroutable` if no queue holds that key, that is no
        edge has a socket for the address (the Excel worker's done/failed notifications).
        The stream takes every message, so such an event goes to ``warren.events``, and
        then, if kept, to the stream by its name (docs/protocol.md 17.1).
        """
        keep = self._history.keeps(envelope.type)
        if not mandatory:
            exchange = self._kept if keep else self._events
            await self._producer.publish(
                envelope, exchange, envelope.to.routing_key,
                kind=MessageKind.EVENT, mandatory=False, timeout=timeout,
            )
            return
        try:
            await self._producer.publish(
                envelope, self._events, envelope.to.routing_key,
                kind=MessageKind.EVENT, mandatory=True, timeout=timeout,
            )
        except Unroutable:
            if keep:
                await self._keep(envelope, timeout)
            raise
        if keep:
            await self._keep(envelope, timeout)

    async def _keep(self, envelope: Envelope, timeout: float) -> None:
        await self._producer.publish(
            envelope, self._producer.default_exchange, HISTORY_STREAM,
            kind=MessageKind.EVENT, mandatory=False, timeout=timeout,
        )

    async def publish_command(
        self, envelope: Envelope, *, timeout: float = PUBLISH_TIMEOUT_S, reply_to: str | None = None
    ) -> None:
        """Publish to ``warren.commands``; raise :class:`Unroutable` if no service listens.

        ``reply_to`` names the caller's queue for a service that answers the caller
        directly (cat_relay's ``POST /send``) instead of with events.
        """
        await self._producer.publish(
            envelope,
            self._commands,
            command_key(envelope.type),
            kind=MessageKind.COMMAND,
            mandatory=True,
            timeout=timeout,
            reply_to=reply_to,
        )

    async def publish_reply(
        self, envelope: Envelope, reply_to: str, request_id: str, *,
        timeout: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        """Answer a command that named ``reply_to``: to that queue, correlated by the command's id.

        Not mandatory: when the asker is gone, nobody waits for the answer.
        """
        await self._producer.publish(
            envelope,
            self._producer.default_exchange,
            reply_to,
            kind=MessageKind.REPLY,
            mandatory=False,
            timeout=timeout,
            answers=request_id,
        )
