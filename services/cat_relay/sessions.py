"""Who answers a user: the replica whose consumer on the user's session queue is active.

Each user being answered has a session queue ``warren.chat.user.<user>``, a quorum
queue with a single active consumer. The replica holding the active consumer *owns* the
session: it alone answers that user's asks, one at a time and in order, and it alone
holds the user's Cat socket (opened on the first ask, closed before the session is let
go).

Sessions are taken through *claims*: messages naming a user, in the quorum queue
``warren.chat.session-claims`` that every replica consumes. The dispatcher publishes a
claim when it puts an ask into a session queue that nobody consumes; the broker hands
it to one replica (round robin, so sessions spread over the replicas), which subscribes to
the session queue and keeps the claim unacknowledged for as long as it does. If that
replica dies, the broker returns the claim and another replica takes the session over,
with the ask the dead one was answering (which it answers ``interrupted``). If no
replica runs at all, the claim waits for the next one to start.

A session is let go after ``idle_s`` without asks, once it is ``max_age_s`` old (so
that no claim stays unacknowledged long enough to meet the broker's consumer timeout),
and on shutdown. Letting go closes the Cat socket, cancels the consumer, then
acknowledges the claims, or hands them on when asks are waiting so that another replica
answers those.

Asks reach a session by two ways, kept in one queue of jobs per user:

- deliveries from the session queue (prefetch one), acknowledged once answered;
- asks the dispatcher answers here directly, without the hop through the session queue
  (:meth:`SessionTable.local` says when that keeps the order).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from shared.logging import correlated
from shared.messaging import EnvelopeError, decode
from shared.messaging.broker import declare_chat_claims_queue, declare_session_queue
from shared.messaging.names import CHAT_CLAIMS_QUEUE, chat_session_queue_name, valid_name
from shared.messaging.producer import PUBLISH_TIMEOUT_S, BrokerUnavailable, MessageKind, Producer
from shared.messaging.work import settle
from services.cat_relay.cat import CatClient
from shared.locks import KeyedLocks
from services.cat_relay.relay import Ask, Relay

log = logging.getLogger(__name__)

HANDED_BACK_HEADER = "x-warren-handed-back"  # set on an ask forwarded after a redelivery
ANSWERED_MEMORY = 4096  # ask ids remembered, to answer a redelivered copy only once
FORWARD_MEMORY = 65536  # users whose last forwarded ask is remembered
# A forward the broker does not confirm is tried again in place, waiting 0.05 s, doubling
# to 1 s, for up to 30 s: long enough for a quorum queue to elect a leader or for the
# connection to come back through the load balancer.
FORWARD_RETRY_S = 30.0
FORWARD_BACKOFF_S = (0.05, 1.0)
# A session's claim stays unacknowledged for the session's whole life, and RabbitMQ
# closes a channel holding a delivery longer than its consumer_timeout (30 min by default).
MAX_AGE_S = 600.0
# Claims held at once by one replica, that is the sessions it can own. A quorum queue
# reads "no limit" (0) as 2000 deliveries, so the limit is given, as high as AMQP allows.
CLAIMS_PREFETCH = 65535


@dataclass(slots=True, eq=False)
class _Job:
    ask: Ask
    delivery: AbstractIncomingMessage | None  # None: taken from chat.ask, acked by its consumer
    done: asyncio.Future[None]


@dataclass(slots=True, eq=False)
class Session:
    user: str
    queue: AbstractQueue
    tag: str | None = None
    claims: list[AbstractIncomingMessage] = field(default_factory=list)
    active: bool = False  # a delivery arrived: the broker made our consumer the active one
    retiring: bool = False  # being let go: takes no more asks from the dispatcher
    released: bool = False
    jobs: deque[_Job] = field(default_factory=deque)
    runner: asyncio.Task[None] | None = None
    idle: asyncio.TimerHandle | None = None
    ends: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        return bool(self.jobs) or self.runner is not None


class SessionTable:
    """The sessions this replica consumes, and the forwarding of asks into session queues."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        relay: Relay,
        cat: CatClient,
        *,
        idle_s: float,
        local_limit: int,
        max_age_s: float = MAX_AGE_S,
        on_count: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self._connection = connection
        self._relay = relay
        self._cat = cat
        self._idle_s = idle_s
        self._max_age_s = max_age_s
        self._local_limit = local_limit
        self._local = 0  # asks answered here straight from chat.ask, not finished yet
        self._on_count = on_count
        self._channel: AbstractRobustChannel | None = None
        self._producer: Producer | None = None
        self._claims_channel: AbstractChannel | None = None
        self._claims_queue: AbstractQueue | None = None
        self._claims_tag: str | None = None
        self._sessions: dict[str, Session] = {}
        self._subscription = KeyedLocks()  # taking or letting go of a session vs forwarding to it
        self._order = KeyedLocks()  # one user's forwards, one after another
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._last_forward: OrderedDict[str, str] = OrderedDict()
        self._synced: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._taking = True

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=1)  # per consumer: one ask at a time per session
        channel.close_callbacks.add(self._on_channel_lost)
        self._channel = channel
        self._producer = Producer(channel)
        claims = await self._connection.channel()
        await claims.set_qos(prefetch_count=CLAIMS_PREFETCH)  # each claim held: a session owned
        claims.close_callbacks.add(self._on_claims_lost)
        self._claims_channel = claims
        self._claims_queue = await declare_chat_claims_queue(claims)
        self._claims_tag = await self._claims_queue.consume(self._on_claim)

    def is_ready(self) -> bool:
        return (
            self._channel is not None
            and not self._channel.is_closed
            and self._claims_channel is not None
            and not self._claims_channel.is_closed
        )

    def __len__(self) -> int:
        return len(self._sessions)

    # -- for the dispatcher ------------------------------------------------------------

    def new_tenure(self) -> None:
        """The dispatcher took ``chat.ask`` on a new channel: what it forwarded before is void."""
        self._last_forward.clear()
        self._synced.clear()

    def local(self, user: str) -> Session | None:
        """The session to answer the user's next ask in, or None to forward it.

        Answering here keeps the order only if this replica owns the session and no
        earlier ask of the user can still be in the session queue: the last ask this
        dispatcher forwarded there has arrived here (in a session queue, it arrives after
        every earlier one, forwarded by this dispatcher or by the one before it). And an
        ask answered here holds a ``chat.ask`` prefetch slot until it is answered: past
        ``local_limit`` of them, asks are forwarded, so slow answers never stop the
        dispatcher from handing out the other users' asks.
        """
        session = self._sessions.get(user)
        if (
            session is None
            or not session.active
            or session.retiring
            or not self._taking
            or user not in self._synced
            or self._local >= self._local_limit
        ):
            return None
        return session

    async def answer_here(self, session: Session, ask: Ask) -> None:
        """Answer an ask from ``chat.ask`` in its turn; return once it is answered."""
        job = _Job(ask, None, asyncio.get_running_loop().create_future())
        self._enqueue(session, job)
        self._local += 1
        try:
            await job.done
        finally:
            self._local -= 1

    async def forward(self, ask: Ask, body: bytes) -> None:
        """Put an ask into its user's session queue and see that some replica consumes it.

        ``body`` is the ask as the dispatcher received it, forwarded unchanged.
        """
        user = ask.user
        self._synced.discard(user)
        self._last_forward[user] = ask.id
        self._last_forward.move_to_end(user)
        if len(self._last_forward) > FORWARD_MEMORY:
            self._last_forward.popitem(last=False)
        async with self._order.hold(user):
            async with self._subscription.hold(user):
                if user in self._sessions:
                    # We consume it, and cannot let go while we hold the lock.
                    await self._forward(ask, body)
                    return
            await self._declare(user)
            await self._forward(ask, body)
            # Counted after the publish: a consumer that leaves before the count is seen
            # here, one that leaves after it sees the ask when it counts (_settle_claims).
            consumers, _waiting = await self._count(user)
            if consumers == 0:
                await self._claim(user)

    # -- taking sessions ---------------------------------------------------------------

    async def _on_claim(self, claim: AbstractIncomingMessage) -> None:
        try:
            user = orjson.loads(claim.body).get("user")
        except (orjson.JSONDecodeError, AttributeError):
            user = None
        if not valid_name(user):
            log.warning("dropped a malformed session claim", extra={"body": claim.body[:200]})
            await settle(claim.reject(requeue=False))
            return
        if not self._taking:
            await self._hand_on(user, claim)  # shutting down: for another replica
            return
        try:
            await self._take(user, claim)
        except Exception:
            log.warning("could not take a session; its claim goes back", extra={"user": user},
                        exc_info=True)
            await settle(claim.nack(requeue=True))

    async def _take(self, user: str, claim: AbstractIncomingMessage) -> None:
        async with self._subscription.hold(user):
            session = self._sessions.get(user)
            if session is not None:
                session.claims.append(claim)
                return
            queue = await self._declare(user)
            session = Session(user, queue)
            self._sessions[user] = session
            self._counted()
            try:
                session.tag = await queue.consume(functools.partial(self._deliver, session))
            except BaseException:
                self._forget(session)
                raise
            session.claims.append(claim)
            loop = asyncio.get_running_loop()
            session.ends = loop.call_later(self._max_age_s, self._retire, session)
            self._rest(session)

    async def _deliver(self, session: Session, message: AbstractIncomingMessage) -> None:
        # Runs in delivery order up to _enqueue: nothing here may await before it.
        if session.released:
            await settle(message.nack(requeue=True))  # for the next owner
            return
        session.active = True
        try:
            envelope = decode(message.body)
        except EnvelopeError as exc:
            log.warning("dead-lettered a session message",
                        extra={"user": session.user, "reason": str(exc)})
            await settle(message.reject(requeue=False))
            return
        handed_back = bool(message.redelivered or (message.headers or {}).get(HANDED_BACK_HEADER))
        ask = Ask(envelope, reply_to=message.reply_to, handed_back=handed_back)
        if self._last_forward.get(session.user) == ask.id:
            del self._last_forward[session.user]
            self._synced.add(session.user)
        self._enqueue(session, _Job(ask, message, asyncio.get_running_loop().create_future()))

    # -- answering, one job at a time --------------------------------------------------

    def _enqueue(self, session: Session, job: _Job) -> None:
        session.jobs.append(job)
        if session.idle is not None:
            session.idle.cancel()
            session.idle = None
        if session.runner is None:
            session.runner = asyncio.create_task(self._run(session))

    async def _run(self, session: Session) -> None:
        try:
            while session.jobs:
                job = session.jobs[0]
                failure = await self._work(job)
                if job.delivery is not None:
                    if session.retiring and len(session.jobs) == 1:
                        await self._stop_consuming(session)  # before the ack: no new delivery
                    if failure is None:
                        await settle(job.delivery.ack())
                    else:
                        await settle(job.delivery.nack(requeue=True))
                session.jobs.popleft()
                _resolve(job, failure)
        finally:
            session.runner = None
        if session.retiring:
            await self._release(session)
        else:
            self._rest(session)

    async def _work(self, job: _Job) -> Exception | None:
        if job.ask.id in self._answered:
            return None  # a copy of an ask answered here already (a lost ack, a re-forward)
        try:
            # One runner task answers the session's asks in turn: each carries its own id.
            with correlated(job.ask.id):
                await self._relay.answer(job.ask)
        except Exception as exc:  # the broker did not take the answer: the ask goes back
            log.warning("could not answer an ask", extra={"ask_id": job.ask.id}, exc_info=True)
            return exc
        self._answered[job.ask.id] = None
        if len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)
        return None

    # -- letting go --------------------------------------------------------------------

    def _rest(self, session: Session) -> None:
        """Idle now: let go after ``idle_s`` unless an ask comes."""
        if session.idle is not None:
            session.idle.cancel()
        session.idle = asyncio.get_running_loop().call_later(self._idle_s, self._retire, session)

    def _retire(self, session: Session) -> None:
        session.retiring = True
        if not session.busy and not session.released:
            self._spawn(self._release(session))

    async def _stop_consuming(self, session: Session) -> None:
        """Close the Cat socket, then cancel the consumer: the next owner's socket comes after."""
        async with self._subscription.hold(session.user):
            session.retiring = True
            await self._cat.release(session.user)
            await self._cancel_consumer(session)

    async def _cancel_consumer(self, session: Session) -> None:
        tag, session.tag = session.tag, None
        if tag is not None and self._channel is not None and not self._channel.is_closed:
            try:
                await session.queue.cancel(tag)
            except Exception:
                log.warning("could not cancel a session consumer", exc_info=True)

    async def _release(self, session: Session) -> None:
        if session.released or session.busy:
            return  # the runner lets go after its last job
        await self._stop_consuming(session)
        if session.busy:
            return  # an ask was delivered while we let go: answered first, by the runner
        async with self._subscription.hold(session.user):
            self._forget(session)
        await self._settle_claims(session)

    async def _settle_claims(self, session: Session) -> None:
        claims, session.claims = session.claims, []
        try:
            consumers, waiting = await self._count(session.user)
        except Exception:
            log.warning("could not count a session queue", extra={"user": session.user},
                        exc_info=True)
            consumers, waiting = 0, 1  # unknown: hand the session on
        if consumers == 0 and waiting == 0:
            for claim in claims:
                await settle(claim.ack())
        elif claims:
            # Asks wait, or other replicas still consume: keep the session claimed.
            for claim in claims:
                await self._hand_on(session.user, claim)
        elif consumers == 0:
            try:
                await self._claim(session.user)
            except Exception:
                log.warning("could not claim a session with asks waiting",
                            extra={"user": session.user}, exc_info=True)

    def _forget(self, session: Session) -> None:
        session.released = True
        session.retiring = True
        for timer in (session.idle, session.ends):
            if timer is not None:
                timer.cancel()
        session.idle = session.ends = None
        if self._sessions.get(session.user) is session:
            del self._sessions[session.user]
            self._synced.discard(session.user)
            self._counted()

    def _counted(self) -> None:
        self._on_count(len(self._sessions))
        if self._sessions:
            self._empty.clear()
        else:
            self._empty.set()

    # -- broker losses -----------------------------------------------------------------

    def _on_channel_lost(self, *_args: Any) -> None:
        """The consumers are gone with the channel, and other replicas may own the sessions
        now: stop every answer in progress (the broker redelivers those asks) and let go."""
        for session in list(self._sessions.values()):
            log.warning("session channel lost; letting the session go",
                        extra={"user": session.user})
            self._forget(session)
            if session.runner is not None:
                session.runner.cancel()
            for job in session.jobs:
                job.done.cancel()
            session.jobs.clear()
            self._spawn(self._cat.release(session.user))
            for claim in session.claims:
                self._spawn(settle(claim.nack(requeue=True)))
            session.claims = []

    def _on_claims_lost(self, *_args: Any) -> None:
        """The broker returned every claim held: other replicas may take the sessions."""
        for session in self._sessions.values():
            session.claims = []

    # -- shutdown ----------------------------------------------------------------------

    async def stop_taking(self) -> None:
        """Take no more sessions or asks from the dispatcher; let each session go once idle."""
        self._taking = False
        tag, self._claims_tag = self._claims_tag, None
        queue = self._claims_queue
        if tag is not None and queue is not None and self._connection.connected.is_set():
            await queue.cancel(tag)
        for session in list(self._sessions.values()):
            self._retire(session)

    async def wait_released(self, timeout: float) -> bool:
        """Wait until every session is let go; False if some were left at the deadline."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def interrupt(self) -> None:
        """At the shutdown deadline: answer what is left ``interrupted`` and let go.

        The Cat sockets are not waited for (a Cat busy answering may not close them
        promptly): closing the Cat client afterwards closes them all.
        """
        sessions = list(self._sessions.values())
        await asyncio.gather(*(self._interrupt(s) for s in sessions), return_exceptions=True)

    async def _interrupt(self, session: Session) -> None:
        if session.runner is not None:
            session.runner.cancel()
            await asyncio.gather(session.runner, return_exceptions=True)
        async with self._subscription.hold(session.user):
            session.retiring = True
            await self._cancel_consumer(session)  # before the acks: no new delivery
        while session.jobs:
            job = session.jobs.popleft()
            if job.ask.id not in self._answered:
                try:
                    await asyncio.wait_for(self._relay.interrupted(job.ask), PUBLISH_TIMEOUT_S)
                except Exception:
                    log.warning("could not say an ask was interrupted", extra={"ask_id": job.ask.id})
            if job.delivery is not None:
                await settle(job.delivery.ack())
            _resolve(job, None)
        self._forget(session)
        await self._settle_claims(session)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for channel in (self._channel, self._claims_channel):
            if channel is not None and not channel.is_closed:
                await channel.close()

    # -- broker operations -------------------------------------------------------------

    async def _declare(self, user: str) -> AbstractQueue:
        assert self._channel is not None
        return await declare_session_queue(self._channel, user)

    async def _count(self, user: str) -> tuple[int, int]:
        """The session queue's consumers and waiting asks, as the broker sees them now."""
        result = (await self._declare(user)).declaration_result
        return int(result.consumer_count or 0), int(result.message_count or 0)

    async def _forward(self, ask: Ask, body: bytes) -> None:
        """Publish the ask to its session queue; while the broker refuses it (a node
        lost: the queue electing a leader nacks, or the connection is being replaced),
        try again in place, holding the user's ``_order`` lock so that the user's later
        asks wait behind it. Returned to ``chat.ask`` instead, it would end after them,
        and a few quick refusals would pass the queue's delivery limit and lose it."""
        loop = asyncio.get_running_loop()
        until = loop.time() + FORWARD_RETRY_S
        delay, most = FORWARD_BACKOFF_S
        while True:
            try:
                await self._forward_once(ask, body)
                return
            except BrokerUnavailable:
                if loop.time() + delay > until:
                    raise
                log.warning("forward not confirmed; trying again", extra={"ask_id": ask.id})
                await asyncio.sleep(delay)  # the backoff's pace, not a wait for an event
                delay = min(delay * 2, most)

    async def _forward_once(self, ask: Ask, body: bytes) -> None:
        assert self._producer is not None
        await self._producer.publish(
            ask.envelope,
            self._producer.default_exchange,
            chat_session_queue_name(ask.user),
            kind=MessageKind.COMMAND,
            mandatory=True,
            reply_to=ask.reply_to,
            headers={HANDED_BACK_HEADER: True} if ask.handed_back else None,
            body=body,
        )

    async def _claim(self, user: str) -> None:
        assert self._producer is not None
        await self._producer.publish_body(
            orjson.dumps({"user": user}),
            self._producer.default_exchange,
            CHAT_CLAIMS_QUEUE,
            kind=MessageKind.COMMAND,
            mandatory=True,
        )

    async def _hand_on(self, user: str, claim: AbstractIncomingMessage) -> None:
        """Let another replica take a claim: a fresh copy, then the held one acknowledged.

        Not returned with a nack: a quorum queue counts each return of a message, and a
        broker with a default delivery limit (RabbitMQ 4) would drop a claim returned too
        often. Only an owner that dies returns its claims that way. If the copy cannot be
        published, the claim is returned after all.
        """
        try:
            await self._claim(user)
        except Exception:
            log.warning("could not hand a session claim on; returning it", extra={"user": user},
                        exc_info=True)
            await settle(claim.nack(requeue=True))
            return
        await settle(claim.ack())

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _resolve(job: _Job, failure: Exception | None) -> None:
    if job.done.done():
        return
    if failure is None:
        job.done.set_result(None)
    else:
        job.done.set_exception(failure)
        job.done.exception()  # nobody awaits a delivery's future: mark the exception seen
