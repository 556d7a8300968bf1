"""One user's asks answered in order, by one replica at a time, spread over all replicas.

``warren.cmd.chat.ask`` has a single active consumer: one relay replica takes asks off
it, in the order they arrived, and forwards each to the asking user's session queue
(``warren.chat.session.<user>``), one user's asks strictly one after another. Session
queues have a single active consumer and a prefetch of one, so a user's asks reach
the Cat one at a time, in order, over one Cat socket.

Who answers a session: when a forward finds the session queue without consumers, it
announces the user on the ``warren.chat.sessions`` fanout. Every replica subscribes
to the announced session; the first to do so becomes its active consumer and the
others stand by, taking over if it dies. Which replica wins is a race, so sessions
spread over the replicas. A replica cancels a session consumer after ``idle_s``
without asks; an empty session queue deletes itself once nobody consumes it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)
from aio_pika.exceptions import AMQPError, PublishError

from shared.messaging import Envelope, EnvelopeError, decode
from shared.messaging.broker import CONTENT_TYPE, BrokerUnavailable, declare_session_queue
from shared.messaging.names import (
    CHAT_SESSIONS_EXCHANGE,
    chat_announcements_queue_name,
    chat_session_queue_name,
    valid_name,
)

log = logging.getLogger(__name__)

ANSWERED_MEMORY = 4096  # ask ids remembered to recognise a redelivery of an answered ask

Answer = Callable[[Envelope], Awaitable[None]]


@dataclass(slots=True)
class _Subscription:
    queue: AbstractQueue
    tag: str
    busy: int = 0
    idle: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Queue:
    """Asks of one user being forwarded: they wait for ``lock`` in the order taken."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: int = 0


class SessionRouter:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        answer: Answer,
        interrupted: Answer,
        *,
        instance_id: str,
        idle_s: float,
        on_count: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self._connection = connection
        self._answer = answer
        self._interrupted = interrupted
        self._instance_id = instance_id
        self._idle_s = idle_s
        self._expires_ms = max(60_000, int(idle_s * 10_000))
        self._on_count = on_count
        self._channel: AbstractRobustChannel | None = None
        self._announcements: AbstractExchange | None = None
        self._subscriptions: dict[str, _Subscription] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._forwarding: dict[str, _Queue] = {}
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._accepting = True

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, AbstractRobustChannel)
        # Per-consumer prefetch of one: each session hands over one ask at a time.
        await channel.set_qos(prefetch_count=1)
        self._channel = channel
        self._announcements = await channel.declare_exchange(
            CHAT_SESSIONS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        inbox = await channel.declare_queue(
            chat_announcements_queue_name(self._instance_id), exclusive=True, auto_delete=True
        )
        await inbox.bind(self._announcements)
        await inbox.consume(self._on_announcement, no_ack=True)

    def is_ready(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    # -- forwarding (the replica that holds the chat.ask queue) ---------------------

    async def forward(self, envelope: Envelope, body: bytes) -> None:
        """Put an ask into its user's session queue; see that some replica consumes it.

        Raises :class:`BrokerUnavailable` if the broker did not confirm.
        """
        user = envelope.sender.name
        message = aio_pika.Message(
            body,
            content_type=CONTENT_TYPE,
            message_id=envelope.id,
            correlation_id=envelope.id,
            type=envelope.type,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        queue = self._forwarding.get(user)
        if queue is None:
            queue = self._forwarding[user] = _Queue()
        queue.pending += 1
        try:
            async with queue.lock:  # FIFO: one user's asks are forwarded in the order taken
                await self._forward(user, message)
        except (PublishError, asyncio.TimeoutError, AMQPError, ConnectionError) as exc:
            raise BrokerUnavailable(f"could not forward ask {envelope.id}: {exc!r}") from exc
        finally:
            queue.pending -= 1
            if not queue.pending:
                del self._forwarding[user]

    async def _forward(self, user: str, message: aio_pika.Message) -> None:
        assert self._channel is not None
        await self._channel.ready()
        async with self._lock(user):
            if user in self._subscriptions:
                # This replica consumes the session (actively or standing by), and cannot
                # let go of it while we hold the lock: one publish is enough.
                await self._publish(message, chat_session_queue_name(user))
                self._touch(user, self._subscriptions[user])
                return
        queue = await declare_session_queue(self._channel, user, expires_ms=self._expires_ms)
        await self._publish(message, queue.name)
        # Checked after the publish: a consumer that cancels before this check is seen
        # here, and one that cancels after it sees the ask in the queue (``_expire``).
        consumers, _waiting = await self._count(user)
        if consumers == 0:
            await self._announce(user)

    async def _publish(self, message: aio_pika.Message, queue: str) -> None:
        assert self._channel is not None
        await self._channel.default_exchange.publish(message, routing_key=queue, mandatory=True, timeout=5.0)

    def _lock(self, user: str) -> asyncio.Lock:
        """Guards this replica's subscription to one user's session."""
        return self._locks.setdefault(user, asyncio.Lock())

    async def _count(self, user: str) -> tuple[int, int]:
        """The session queue's consumers and waiting asks, as the broker sees them now."""
        assert self._channel is not None
        queue = await declare_session_queue(self._channel, user, expires_ms=self._expires_ms)
        result = queue.declaration_result
        if result is None:
            return 0, 0
        return int(result.consumer_count), int(result.message_count)

    async def _announce(self, user: str) -> None:
        assert self._announcements is not None
        await self._announcements.publish(
            aio_pika.Message(orjson.dumps({"user": user})), routing_key="", timeout=5.0
        )

    # -- answering (every replica) ---------------------------------------------------

    async def _on_announcement(self, message: AbstractIncomingMessage) -> None:
        try:
            user = orjson.loads(message.body).get("user")
        except (orjson.JSONDecodeError, AttributeError):
            user = None
        if not valid_name(user) or not self._accepting:
            return
        try:
            await self._subscribe(user)
        except Exception:
            log.warning("could not subscribe to a session", extra={"user": user}, exc_info=True)

    async def _subscribe(self, user: str) -> None:
        async with self._lock(user):
            subscription = self._subscriptions.get(user)
            if subscription is None:
                assert self._channel is not None
                queue = await declare_session_queue(self._channel, user, expires_ms=self._expires_ms)
                tag = await queue.consume(functools.partial(self._deliver, user))
                subscription = self._subscriptions[user] = _Subscription(queue, tag)
                self._on_count(len(self._subscriptions))
            self._touch(user, subscription)

    def _touch(self, user: str, subscription: _Subscription) -> None:
        if subscription.idle is not None:
            subscription.idle.cancel()
        subscription.idle = asyncio.get_running_loop().call_later(
            self._idle_s, lambda: asyncio.ensure_future(self._expire(user))
        )

    async def _expire(self, user: str) -> None:
        async with self._lock(user):
            subscription = self._subscriptions.get(user)
            if subscription is None or not self._accepting:
                return
            if subscription.busy:
                self._touch(user, subscription)
                return
            del self._subscriptions[user]
            self._on_count(len(self._subscriptions))
            await self._cancel(subscription)
        try:
            consumers, waiting = await self._count(user)
            if waiting and not consumers:
                await self._subscribe(user)  # an ask arrived as we let go: take it after all
        except Exception:
            log.warning("could not re-check an idle session", extra={"user": user}, exc_info=True)

    async def _cancel(self, subscription: _Subscription) -> None:
        if subscription.idle is not None:
            subscription.idle.cancel()
        if self._connection.connected.is_set():
            try:
                await subscription.queue.cancel(subscription.tag)
            except Exception:
                log.warning("could not cancel a session consumer", exc_info=True)

    async def _deliver(self, user: str, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._handle(user, message))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, user: str, message: AbstractIncomingMessage) -> None:
        subscription = self._subscriptions.get(user)
        if subscription is not None:
            subscription.busy += 1
        try:
            try:
                envelope = decode(message.body)
            except EnvelopeError as exc:
                log.warning("rejected a session message", extra={"user": user, "reason": str(exc)})
                await message.reject(requeue=False)
                return
            if not message.redelivered:
                await self._answer(envelope)
            elif envelope.id not in self._answered:
                # The replica answering it stopped mid-answer. Answering again could
                # loop on an ask that kills relays: say so instead.
                await self._interrupted(envelope)
            self._remember(envelope.id)
            await message.ack()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session delivery failed; returned to the queue", extra={"user": user})
            try:
                await message.nack(requeue=True)
            except Exception:
                log.warning("could not return the delivery; the broker will redeliver it")
        finally:
            if subscription is not None:
                subscription.busy -= 1
                if self._accepting and self._subscriptions.get(user) is subscription:
                    self._touch(user, subscription)

    def _remember(self, ask_id: str) -> None:
        self._answered[ask_id] = None
        if len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)

    # -- shutdown --------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def stop_consuming(self) -> None:
        """Hand every session to another replica: cancel this replica's session consumers.

        Standbys take over at once; a session with asks waiting and no standby is
        announced again so that a running replica subscribes.
        """
        self._accepting = False
        subscriptions = dict(self._subscriptions)
        self._subscriptions.clear()
        self._on_count(0)
        await asyncio.gather(*(self._cancel(s) for s in subscriptions.values()), return_exceptions=True)
        await asyncio.gather(*(self._hand_over(user) for user in subscriptions), return_exceptions=True)

    async def _hand_over(self, user: str) -> None:
        consumers, waiting = await self._count(user)
        if waiting and not consumers:
            await self._announce(user)

    async def drain(self, timeout: float) -> bool:
        if not self._in_flight:
            return True
        _done, pending = await asyncio.wait(set(self._in_flight), timeout=timeout)
        return not pending

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
