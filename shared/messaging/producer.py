"""The one place a message is published: an envelope becomes an AMQP message here.

Every publisher in Warren (events, commands, replies, the runner's runs queue and
control forwards, the relay's session forwards and claims) hands its envelope to a
:class:`Producer`. It encodes the envelope, sets the AMQP properties, publishes with
publisher confirms, and turns the broker's answers into Warren's two errors:

- :class:`Unroutable`: a ``mandatory`` message was returned, no queue is bound for it;
- :class:`BrokerUnavailable`: the broker did not confirm it (timeout, nack, lost
  channel or connection). It may still have been delivered.

What a message is decides how it is kept (:class:`MessageKind`): a command is
persistent, so it survives a broker restart in its durable queue; an event or a reply
is transient.

**The correlation id** of a message is the id of the piece of work it belongs to
(:func:`correlation_for`), by one rule, in this order:

1. a reply carries the id of the command it answers;
2. a message published while some work is being handled carries that work's id, the
   current correlation id (``shared/logging.py``; a consumer sets it from the message
   it handles, the edge from the command it accepts);
3. otherwise the message starts a piece of work of its own and carries its own id.

The ``message_id`` is always the envelope's own id.

A message is its body and its pamqp properties (:class:`Outgoing`), published on the
aiormq channel under aio-pika's: the same ``basic.publish`` that aio-pika's
``Exchange.publish`` makes, without building an ``aio_pika.Message`` first, which cost
more than the rest of a publish's own work.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from typing import Final, NamedTuple

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    DeliveryMode,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, PublishError
from pamqp.commands import Basic

from shared.logging import correlation_id as current_correlation_id
from shared.messaging.envelope import Envelope, encode

CONTENT_TYPE: Final = "application/json"
PUBLISH_TIMEOUT_S: Final = 5.0

HeaderValue = bool | int | str


class BrokerUnavailable(ConnectionError):
    """The broker did not answer at start-up, or a publish could not be confirmed."""


class Unroutable(LookupError):
    """A message published ``mandatory`` was returned: no queue is bound for it."""


class MessageKind(enum.Enum):
    """What a message is, which decides how the broker keeps it."""

    COMMAND = "command"  # work for a service: persistent
    EVENT = "event"  # a fact for whoever listens now: transient
    REPLY = "reply"  # an outcome for one waiting asker: transient

    @property
    def delivery_mode(self) -> DeliveryMode:
        if self is MessageKind.COMMAND:
            return DeliveryMode.PERSISTENT
        return DeliveryMode.NOT_PERSISTENT


def correlation_for(envelope: Envelope, *, answers: str | None = None) -> str:
    """The correlation id of ``envelope``: the module docstring's rule.

    ``answers`` is the id of the command a reply answers.
    """
    return answers or current_correlation_id() or envelope.id


class Outgoing(NamedTuple):
    """A message as it goes to the broker."""

    body: bytes
    properties: Basic.Properties


def build_message(
    envelope: Envelope,
    kind: MessageKind,
    *,
    answers: str | None = None,
    reply_to: str | None = None,
    headers: Mapping[str, HeaderValue] | None = None,
    body: bytes | None = None,
) -> Outgoing:
    """The AMQP message for ``envelope``.

    ``body`` is the envelope's encoding as it was received, for a message forwarded
    unchanged; otherwise the envelope is encoded here. ``answers`` is only for a
    :attr:`MessageKind.REPLY`, which must have it.
    """
    if (kind is MessageKind.REPLY) != (answers is not None):
        raise ValueError("a reply, and only a reply, names the command it answers")
    return Outgoing(
        encode(envelope) if body is None else body,
        Basic.Properties(
            content_type=CONTENT_TYPE,
            message_id=envelope.id,
            correlation_id=correlation_for(envelope, answers=answers),
            reply_to=reply_to,
            message_type=envelope.type,
            headers=dict(headers) if headers else None,
            delivery_mode=kind.delivery_mode.value,
        ),
    )


class Producer:
    """Publishes on one channel opened with publisher confirms and returns raised.

    The exchanges given to :meth:`publish` are declared on :attr:`channel` by the
    caller (the owner of the topology); :attr:`default_exchange` routes to a queue by
    its name.
    """

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel

    @classmethod
    async def open(cls, connection: AbstractConnection) -> Producer:
        return cls(await connection.channel(publisher_confirms=True, on_return_raises=True))

    @property
    def channel(self) -> AbstractChannel:
        return self._channel

    @property
    def default_exchange(self) -> AbstractExchange:
        return self._channel.default_exchange

    async def publish(
        self,
        envelope: Envelope,
        exchange: AbstractExchange,
        routing_key: str,
        *,
        kind: MessageKind,
        mandatory: bool,
        answers: str | None = None,
        reply_to: str | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        body: bytes | None = None,
        timeout: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        """Publish ``envelope`` and wait for the broker's confirm (:func:`build_message`).

        Raises :class:`Unroutable` if ``mandatory`` and no queue took it, and
        :class:`BrokerUnavailable` if the broker did not confirm it within ``timeout``.
        """
        message = build_message(
            envelope, kind, answers=answers, reply_to=reply_to, headers=headers, body=body
        )
        await self._send(message, exchange, routing_key, mandatory=mandatory, timeout=timeout)

    async def publish_body(
        self,
        body: bytes,
        exchange: AbstractExchange,
        routing_key: str,
        *,
        kind: MessageKind,
        mandatory: bool,
        headers: Mapping[str, HeaderValue] | None = None,
        timeout: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        """Publish a JSON body that is not an envelope (the relay's session claims, the
        edge's markers in the history stream), with the same confirms and errors as
        :meth:`publish` and no envelope properties."""
        properties = Basic.Properties(
            content_type=CONTENT_TYPE, delivery_mode=kind.delivery_mode.value,
            headers=dict(headers) if headers else None,
        )
        await self._send(
            Outgoing(body, properties), exchange, routing_key, mandatory=mandatory, timeout=timeout
        )

    async def _send(
        self,
        message: Outgoing,
        exchange: AbstractExchange,
        routing_key: str,
        *,
        mandatory: bool,
        timeout: float,
    ) -> None:
        try:
            if self._channel.is_closed:
                raise ChannelInvalidStateError(f"{self._channel!r} closed")
            channel = await self._channel.get_underlay_channel()
            await channel.basic_publish(
                message.body, exchange=exchange.name, routing_key=routing_key,
                properties=message.properties, mandatory=mandatory, timeout=timeout,
            )
        except PublishError as exc:
            where = exchange.name or "the default exchange"
            raise Unroutable(f"no queue is bound for {routing_key!r} on {where}") from exc
        except (
            asyncio.TimeoutError,
            AMQPError,  # a nack, a closed channel or connection
            ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            where = exchange.name or "the default exchange"
            raise BrokerUnavailable(f"publish to {where} not confirmed: {exc!r}") from exc
