"""The one publish path (shared/messaging/producer.py): properties per kind of message,
the correlation id rule, and how the broker's answers become Warren's errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aio_pika.abc import DeliveryMode
from aio_pika.exceptions import ChannelInvalidStateError, DeliveryError, PublishError
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from shared.logging import correlated
from shared.messaging import Address, Envelope, encode
from shared.messaging.producer import (
    CONTENT_TYPE,
    BrokerUnavailable,
    MessageKind,
    Producer,
    Unroutable,
    build_message,
    correlation_for,
)


def _envelope(type_: str = "run.start") -> Envelope:
    alice = Address.user("alice")
    return Envelope(type=type_, to=alice, sender=alice, data={"job": "hello"})


def test_a_command_is_persistent_and_identified_by_its_envelope() -> None:
    envelope = _envelope()
    message = build_message(envelope, MessageKind.COMMAND)
    assert message.body == encode(envelope)
    assert message.delivery_mode == DeliveryMode.PERSISTENT
    assert message.content_type == CONTENT_TYPE
    assert message.message_id == envelope.id
    assert message.type == "run.start"
    assert message.correlation_id == envelope.id  # it starts a piece of work
    assert message.reply_to is None
    assert not message.headers


def test_an_event_and_a_reply_are_transient() -> None:
    envelope = _envelope("chat.reply")
    assert build_message(envelope, MessageKind.EVENT).delivery_mode == DeliveryMode.NOT_PERSISTENT
    reply = build_message(envelope, MessageKind.REPLY, answers="ask-1")
    assert reply.delivery_mode == DeliveryMode.NOT_PERSISTENT


@pytest.mark.parametrize("kind", [MessageKind.COMMAND, MessageKind.EVENT])
def test_a_message_published_while_handling_work_carries_that_works_id(
    kind: MessageKind,
) -> None:
    envelope = _envelope()
    with correlated("command-7"):
        message = build_message(envelope, kind)
    assert message.correlation_id == "command-7"
    assert message.message_id == envelope.id


def test_a_reply_carries_the_id_of_the_command_it_answers_whatever_the_work() -> None:
    envelope = _envelope("chat.reply")
    with correlated("something-else"):
        assert correlation_for(envelope, answers="ask-1") == "ask-1"
        assert build_message(envelope, MessageKind.REPLY, answers="ask-1").correlation_id == "ask-1"


def test_only_a_reply_names_the_command_it_answers() -> None:
    with pytest.raises(ValueError):
        build_message(_envelope(), MessageKind.REPLY)
    with pytest.raises(ValueError):
        build_message(_envelope(), MessageKind.EVENT, answers="ask-1")


def test_a_forwarded_message_keeps_its_body_and_says_where_it_came_from() -> None:
    envelope = _envelope("chat.ask")
    received = encode(envelope) + b" "  # as it arrived, not as this process would encode it
    message = build_message(
        envelope, MessageKind.COMMAND, body=received, reply_to="warren.chat.replies.r1",
        headers={"x-warren-handed-back": True},
    )
    assert message.body == received
    assert message.reply_to == "warren.chat.replies.r1"
    assert message.headers == {"x-warren-handed-back": True}


class _Exchange:
    """An exchange whose publish answers as the broker did (the producer's seam)."""

    def __init__(self, outcome: BaseException | None, name: str = "warren.events") -> None:
        self.name = name
        self.outcome = outcome
        self.published: list[dict[str, Any]] = []

    async def publish(self, message: Any, **kwargs: Any) -> None:
        self.published.append({"message": message, **kwargs})
        if self.outcome is not None:
            raise self.outcome


class _Channel:
    def __init__(self, default: _Exchange) -> None:
        self.default_exchange = default


async def _publish(exchange: _Exchange, *, mandatory: bool = True) -> None:
    producer = Producer(_Channel(exchange))  # type: ignore[arg-type]
    await producer.publish(
        _envelope(), exchange, "user.alice",  # type: ignore[arg-type]
        kind=MessageKind.EVENT, mandatory=mandatory, timeout=1.5,
    )


async def test_a_confirmed_publish_goes_out_with_its_routing_and_timeout() -> None:
    exchange = _Exchange(None)
    await _publish(exchange, mandatory=False)
    [call] = exchange.published
    assert call["routing_key"] == "user.alice"
    assert call["mandatory"] is False
    assert call["timeout"] == 1.5


async def test_a_returned_message_is_unroutable() -> None:
    frame = Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key="user.alice")
    delivered = DeliveredMessage(frame, ContentHeader(), b"", None)  # type: ignore[arg-type]
    returned = PublishError(delivered, frame)
    with pytest.raises(Unroutable, match="user.alice"):
        await _publish(_Exchange(returned))


@pytest.mark.parametrize(
    "failure",
    [
        asyncio.TimeoutError(),
        DeliveryError(None, Basic.Nack(delivery_tag=1)),
        ChannelInvalidStateError("closed"),
        ConnectionResetError(),
    ],
    ids=["timeout", "nack", "closed-channel", "connection"],
)
async def test_an_unconfirmed_publish_is_broker_unavailable(failure: BaseException) -> None:
    with pytest.raises(BrokerUnavailable, match="warren.events"):
        await _publish(_Exchange(failure))


async def test_a_body_that_is_not_an_envelope_gets_only_what_keeps_it() -> None:
    exchange = _Exchange(None, name="")
    producer = Producer(_Channel(exchange))  # type: ignore[arg-type]
    await producer.publish_body(
        b'{"user":"alice"}', producer.default_exchange, "warren.chat.claims",
        kind=MessageKind.COMMAND, mandatory=True,
    )
    message = exchange.published[0]["message"]
    assert message.body == b'{"user":"alice"}'
    assert message.delivery_mode == DeliveryMode.PERSISTENT
    assert message.message_id is None and message.correlation_id is None
