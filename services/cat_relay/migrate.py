"""Moving the asks left in the classic chat queues of earlier relays into the quorum ones.

Relays before the quorum chat queues kept each user's session in a classic queue,
``warren.chat.session.<user>``, taken through claims in the classic queue
``warren.chat.claims``. A queue's type cannot change under its name, so the quorum
queues have new names (``shared/messaging/names.py``), and the asks that were waiting in
a classic session queue when those relays stopped would wait there for nobody. A relay
moves them once, at start-up, before it takes any ask off ``chat.ask``:

- Those relays kept a claim in the classic claims queue for every session queue with
  asks waiting and no consumer. For each such claim, the user's waiting asks are moved,
  oldest first, into the user's quorum session queue, as the dispatcher forwards an ask
  (each published and confirmed before it is acknowledged where it was, and the session
  claimed in the quorum claims queue); then the classic session queue is deleted once
  empty, and the claim acknowledged.
- Last, the classic claims queue is deleted once empty: later starts find nothing to do,
  at the cost of one passive declaration that the broker refuses.

The moved asks come before any ask still in ``chat.ask``, as they did. For that, no
relay may take asks while another still moves some: one relay moves at a time, holding
an exclusive queue of its connection (:data:`CHAT_DRAIN_LOCK_QUEUE`), and none moves
while a relay of the earlier version still consumes the classic claims queue. A relay
that finds either waits with capped backoff, up to ``wait_s``, then fails its start-up
with :class:`ClassicRelaysRunning` (docs/deploy.md, "Moving the chat queues to quorum
queues", says to stop the earlier relays first). An ask moved whose acknowledgement is
lost (the broker connection breaks in between) is moved again, marked redelivered, and
answered ``interrupted`` if the first copy was answered elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed
from aiormq.exceptions import ChannelAccessRefused, ChannelLockedResource

from shared.messaging import EnvelopeError, decode
from shared.messaging.producer import BrokerUnavailable
from shared.messaging.names import (
    CHAT_DRAIN_LOCK_QUEUE,
    CLASSIC_CHAT_CLAIMS_QUEUE,
    classic_chat_session_queue_name,
    valid_name,
)
from services.cat_relay.relay import Ask
from services.cat_relay.sessions import HANDED_BACK_HEADER

log = logging.getLogger(__name__)

Forward = Callable[[Ask, bytes], Awaitable[None]]

MAX_RETRY_INTERVAL_S = 2.0


class ClassicRelaysRunning(BrokerUnavailable):
    """The classic chat queues could not be drained: earlier relays still consume them,
    or another relay kept draining them for longer than the wait allowed. A start-up
    error, reported as the broker being unusable is (``warren cat-relay`` exits 2)."""


async def drain_classic_sessions(
    connection: AbstractRobustConnection, forward: Forward, *, wait_s: float
) -> int:
    """Move every ask left in the classic session queues; return how many were moved."""
    loop = asyncio.get_running_loop()
    until = loop.time() + wait_s
    delay = 0.1
    warned = False
    while True:
        moved, blocked = await _drain_once(connection, forward)
        if blocked is None:
            if moved:
                log.info("moved the asks left in the classic chat session queues",
                         extra={"asks": moved})
            return moved
        if loop.time() + delay > until:
            raise ClassicRelaysRunning(
                f"cannot drain the classic chat queues: {blocked}. Stop every relay of the "
                "version before the quorum chat queues first (docs/deploy.md, \"Moving the "
                "chat queues to quorum queues\")"
            )
        if not warned:
            log.warning("waiting to drain the classic chat queues", extra={"why": blocked})
            warned = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_RETRY_INTERVAL_S)


async def _drain_once(
    connection: AbstractRobustConnection, forward: Forward
) -> tuple[int, str | None]:
    """One attempt: (asks moved, None) when done, or (asks moved, why) to try again."""
    # Plain declarations on channels of their own: a refused one closes its channel.
    channel = await connection.channel()
    try:
        try:
            claims = await channel.declare_queue(
                CLASSIC_CHAT_CLAIMS_QUEUE, passive=True, robust=False
            )
        except ChannelNotFoundEntity:
            return 0, None  # nothing left from earlier relays: the usual case
        if claims.declaration_result.consumer_count:
            return 0, f"{CLASSIC_CHAT_CLAIMS_QUEUE} still has consumers (earlier relays)"
        if not await _lock(channel):
            return 0, "another relay is draining them"
        moved = 0
        try:
            while (claim := await claims.get(no_ack=False, fail=False)) is not None:
                user = _claimed_user(claim.body)
                if user is None:
                    log.warning("dropped a malformed classic session claim",
                                extra={"body": claim.body[:200]})
                else:
                    moved += await _drain_session(connection, user, forward)
                await claim.ack()
            try:
                await claims.delete(if_unused=True, if_empty=True)
            except ChannelPreconditionFailed:
                return moved, f"{CLASSIC_CHAT_CLAIMS_QUEUE} took new claims while drained"
            return moved, None
        finally:
            if not channel.is_closed:
                await channel.queue_delete(CHAT_DRAIN_LOCK_QUEUE)
    finally:
        if not channel.is_closed:
            await channel.close()


async def _lock(channel: AbstractRobustChannel) -> bool:
    """Hold the drain lock: an exclusive queue, which one connection at a time may hold
    and which goes with its connection if this process dies."""
    try:
        await channel.declare_queue(CHAT_DRAIN_LOCK_QUEUE, exclusive=True, robust=False)
    except (ChannelLockedResource, ChannelAccessRefused):
        return False
    return True


async def _drain_session(connection: AbstractRobustConnection, user: str, forward: Forward) -> int:
    """Move one user's waiting asks, oldest first, then delete the classic queue."""
    channel = await connection.channel()
    try:
        try:
            queue = await channel.declare_queue(
                classic_chat_session_queue_name(user), passive=True, robust=False
            )
        except ChannelNotFoundEntity:
            return 0  # expired, or drained by an earlier attempt
        moved = 0
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            try:
                envelope = decode(message.body)
            except EnvelopeError as exc:
                log.warning("dead-lettered a classic session message",
                            extra={"user": user, "reason": str(exc)})
                await message.reject(requeue=False)  # to the chat.ask dead letters
                continue
            handed_back = message.redelivered or (message.headers or {}).get(HANDED_BACK_HEADER)
            ask = Ask(envelope, reply_to=message.reply_to, handed_back=bool(handed_back))
            await forward(ask, message.body)
            await message.ack()
            moved += 1
        try:
            await queue.delete(if_unused=True, if_empty=True)
        except ChannelPreconditionFailed:
            log.warning("a classic chat session queue is in use; left as it is",
                        extra={"user": user})
        return moved
    finally:
        if not channel.is_closed:
            await channel.close()


def _claimed_user(body: bytes) -> str | None:
    try:
        user = orjson.loads(body).get("user")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return user if valid_name(user) else None
