"""Taking asks off ``warren.cmd.chat.ask`` and sending each to where its user is answered.

The work queue has a single active consumer: one replica at a time, the dispatcher,
takes asks off it in the order they arrived. For each ask it either

- answers it here, when this replica owns the user's session and no earlier ask of
  the user can still be on its way (``SessionTable.local``): no extra broker hop, which
  is the common case once a user's first ask has set up the session; or
- forwards it into the user's session queue, whose owner (any replica) answers it.

Either way the ask stays unacknowledged on the work queue until it is answered or its
forward is confirmed, so a dispatcher that dies loses nothing: the broker gives the asks
to the next dispatcher, marked redelivered, and those are answered ``interrupted``
(docs/cat_relay.md says why).
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from shared.messaging import Envelope
from shared.messaging.producer import BrokerUnavailable, Unroutable
from services.cat_relay.metrics import RelayMetrics
from services.cat_relay.relay import Ask
from services.cat_relay.sessions import SessionTable


class Dispatcher:
    def __init__(self, sessions: SessionTable, metrics: RelayMetrics) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._tenure: object | None = None

    async def take(self, envelope: Envelope, message: AbstractIncomingMessage) -> None:
        """The ``chat.ask`` consumer's handler: returns once the ask may be acknowledged.

        Raises :class:`BrokerUnavailable` when a forward was not confirmed (the ask goes
        back to the work queue).
        """
        # Everything up to answer_here/forward runs without awaiting, so asks are routed
        # in the order the broker delivered them.
        channel = message.channel
        if channel is not self._tenure:
            self._tenure = channel
            self._sessions.new_tenure()
        ask = Ask(envelope, reply_to=message.reply_to, handed_back=bool(message.redelivered))
        session = self._sessions.local(ask.user)
        if session is not None:
            self._metrics.routed.labels("local").inc()
            await self._sessions.answer_here(session, ask)
            return
        self._metrics.routed.labels("session").inc()
        try:
            await self._sessions.forward(ask, message.body)
        except (BrokerUnavailable, Unroutable, asyncio.TimeoutError, AMQPError,
                ChannelInvalidStateError, ConnectionError) as exc:
            raise BrokerUnavailable(f"could not forward ask {ask.id}: {exc!r}") from exc
