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
    body, properties = build_message(envelope, MessageKind.COMMAND)
    assert body == encode(envelope)
    assert properties.delivery_mode == DeliveryMode.PERSISTENT
    assert properties.content_type == CONTENT_TYPE
    assert properties.message_id == envelope.id
    assert properties.message_type == "run.start"
    assert properties.correlation_id == envelope.id  # it starts a piece of work
    assert properties.reply_to is None
    assert not properties.headers


def test_an_event_and_a_reply_are_transient() -> None:
    envelope = _envelope("chat.reply")
    event = build_message(envelope, MessageKind.EVENT).properties
    assert event.delivery_mode == DeliveryMode.NOT_PERSISTENT
    reply = build_message(envelope, MessageKind.REPLY, answers="ask-1").properties
    assert reply.delivery_mode == DeliveryMode.NOT_PERSISTENT


@pytest.mark.parametrize("kind", [MessageKind.COMMAND, MessageKind.EVENT])
def test_a_message_published_while_handling_work_carries_that_works_id(
    kind: MessageKind,
) -> None:
    envelope = _envelope()
    with correlated("command-7"):
        properties = build_message(envelope, kind).properties
    assert properties.correlation_id == "command-7"
    assert properties.message_id == envelope.id


def test_a_reply_carries_the_id_of_the_command_it_answers_whatever_the_work() -> None:
    envelope = _envelope("chat.reply")
    with correlated("something-else"):
        assert correlation_for(envelope, answers="ask-1") == "ask-1"
        reply = build_message(envelope, MessageKind.REPLY, answers="ask-1")
        assert reply.properties.correlation_id == "ask-1"


def test_only_a_reply_names_the_command_it_answers() -> None:
    with pytest.raises(ValueError):
        build_message(_envelope(), MessageKind.REPLY)
    with pytest.raises(ValueError):
        build_message(_envelope(), MessageKind.EVENT, answers="ask-1")


def test_a_forwarded_message_keeps_its_body_and_says_where_it_came_from() -> None:
    envelope = _envelope("chat.ask")
    received = encode(envelope) + b" "  # as it arrived, not as this process would encode it
    body, properties = build_message(
        envelope, MessageKind.COMMAND, body=received, reply_to="warren.chat.replies.r1",
        headers={"x-warren-handed-back": True},
    )
    assert body == received
    assert properties.reply_to == "warren.chat.replies.r1"
    assert properties.headers == {"x-warren-handed-back": True}


class _Exchange:
    def __init__(self, name: str = "warren.events") -> None:
        self.name = name


class _Underlay:
    """aiormq's channel, whose publish answers as the broker did (the producer's seam)."""

    def __init__(self, outcome: BaseException | None) -> None:
        self.outcome = outcome
        self.published: list[dict[str, Any]] = []

    async def basic_publish(self, body: bytes, **kwargs: Any) -> None:
        self.published.append({"body": body, **kwargs})
        if self.outcome is not None:
            raise self.outcome


class _Channel:
    def __init__(self, underlay: _Underlay, *, closed: bool = False) -> None:
        self.default_exchange = _Exchange("")
        self.is_closed = closed
        self.underlay = underlay

    async def get_underlay_channel(self) -> _Underlay:
        return self.underlay


async def _publish(channel: _Channel, *, mandatory: bool = True) -> None:
    producer = Producer(channel)  # type: ignore[arg-type]
    await producer.publish(
        _envelope(), _Exchange(), "user.alice",  # type: ignore[arg-type]
        kind=MessageKind.EVENT, mandatory=mandatory, timeout=1.5,
    )


async def test_a_confirmed_publish_goes_out_with_its_routing_and_timeout() -> None:
    underlay = _Underlay(None)
    await _publish(_Channel(underlay), mandatory=False)
    [call] = underlay.published
    assert call["exchange"] == "warren.events"
    assert call["routing_key"] == "user.alice"
    assert call["mandatory"] is False
    assert call["timeout"] == 1.5


async def test_a_returned_message_is_unroutable() -> None:
    frame = Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key="user.alice")
    delivered = DeliveredMessage(frame, ContentHeader(), b"", None)  # type: ignore[arg-type]
    returned = PublishError(delivered, frame)
    with pytest.raises(Unroutable, match="user.alice"):
        await _publish(_Channel(_Underlay(returned)))


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
        await _publish(_Channel(_Underlay(failure)))


async def test_a_publish_on_a_closed_channel_is_broker_unavailable() -> None:
    underlay = _Underlay(None)
    with pytest.raises(BrokerUnavailable, match="warren.events"):
        await _publish(_Channel(underlay, closed=True))
    assert not underlay.published


async def test_a_body_that_is_not_an_envelope_gets_only_what_keeps_it() -> None:
    underlay = _Underlay(None)
    producer = Producer(_Channel(underlay))  # type: ignore[arg-type]
    await producer.publish_body(
        b'{"user":"alice"}', producer.default_exchange, "warren.chat.claims",
        kind=MessageKind.COMMAND, mandatory=True,
    )
    [call] = underlay.published
    assert call["body"] == b'{"user":"alice"}' and call["exchange"] == ""
    properties = call["properties"]
    assert properties.delivery_mode == DeliveryMode.PERSISTENT
    assert properties.message_id is None and properties.correlation_id is None
