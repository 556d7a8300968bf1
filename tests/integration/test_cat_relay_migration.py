"""cat_relay after an upgrade from the classic chat queues: the asks the earlier relays
left in ``warren.chat.session.<user>`` are answered first, in order, and the classic
queues go away (services/cat_relay/migrate.py, docs/deploy.md)."""

from __future__ import annotations

from collections.abc import Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelNotFoundEntity
from aiormq.abc import FieldValue

import services.cat_relay.server as relay_server
from shared.messaging import Address, Envelope, encode
from shared.messaging.broker import CHAT_SESSION_EXPIRES_MS, Publisher, connect, declare_work_queue
from shared.messaging.names import (
    CLASSIC_CHAT_CLAIMS_QUEUE,
    DEAD_LETTER_EXCHANGE,
    Command,
    chat_session_queue_name,
    classic_chat_session_queue_name,
    dead_letter_queue_name,
    work_queue_name,
)
from services.cat_relay.migrate import ClassicRelaysRunning
from services.cat_relay.server import RelayServer
from services.cat_relay.sessions import HANDED_BACK_HEADER
from services.ws_edge.server import EdgeServer
from tests.support.cat_v1 import CatV1Double, reply_for
from tests.support.relay import cat, chat_for, make_relay  # noqa: F401  (fixtures)


def alice_asks(text: str) -> Envelope:
    return Envelope(
        type=Command.CHAT_ASK, to=Address.user("alice"), sender=Address.user("alice"),
        data={"text": text},
    )


async def declare_classic_queues(connection: AbstractRobustConnection, user: str) -> None:
    """The classic session and claims queues exactly as relays before the quorum ones
    declared them."""
    channel = await connection.channel()
    await channel.declare_queue(
        classic_chat_session_queue_name(user),
        durable=True,
        arguments={
            "x-single-active-consumer": True,
            "x-expires": CHAT_SESSION_EXPIRES_MS,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": dead_letter_queue_name(work_queue_name(Command.CHAT_ASK)),
        },
    )
    await channel.declare_queue(CLASSIC_CHAT_CLAIMS_QUEUE, durable=True)


async def exists(connection: AbstractRobustConnection, queue: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, passive=True, robust=False)
    except ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def test_asks_left_in_classic_session_queues_are_answered_first_in_order(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,  # noqa: F811
    publisher: Publisher, amqp_url: str, token_for: Callable[..., str],
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    left = [alice_asks("old 0"), alice_asks("old 1"), alice_asks("old 2")]
    newer = alice_asks("newer")
    connection = await connect(amqp_url, name="warren-test-classic-relay")
    async with connection:
        # What earlier relays left when they stopped: asks waiting in alice's classic
        # session queue (the second one handed back by a replica that stopped holding
        # it), and the claim that says so; and alice's next ask, still in chat.ask.
        await declare_classic_queues(connection, "alice")
        channel = await connection.channel()
        for envelope in left:
            headers: dict[str, FieldValue] = {HANDED_BACK_HEADER: envelope is left[1]}
            await channel.default_exchange.publish(
                aio_pika.Message(encode(envelope), headers=headers,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=classic_chat_session_queue_name("alice"),
            )
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"user": "alice"}', delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=CLASSIC_CHAT_CLAIMS_QUEUE,
        )
        await declare_work_queue(channel, Command.CHAT_ASK)
        await publisher.publish_command(newer)

        await make_relay().start()
        outcomes = [(await alice.outcome(envelope.id, timeout=30))[1] for envelope in left + [newer]]
        assert [o["type"] for o in outcomes] == ["chat.reply", "chat.error", "chat.reply",
                                                 "chat.reply"], outcomes
        assert outcomes[1]["data"]["code"] == "interrupted"  # not sent to the Cat again
        assert outcomes[3]["data"]["text"] == reply_for("newer")
        assert cat.asks["alice"] == ["old 0", "old 2", "newer"]
        assert cat.max_busy["alice"] == 1
        # The classic queues are gone; alice's session lives in her quorum queue now.
        assert not await exists(connection, classic_chat_session_queue_name("alice"))
        assert not await exists(connection, CLASSIC_CHAT_CLAIMS_QUEUE)
        assert await exists(connection, chat_session_queue_name("alice"))


async def test_a_relay_does_not_start_while_earlier_relays_consume_the_classic_claims(
    make_relay: Callable[..., RelayServer], amqp_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay_server, "CLASSIC_DRAIN_WAIT_S", 0.5)
    connection = await connect(amqp_url, name="warren-test-classic-relay")
    async with connection:
        await declare_classic_queues(connection, "alice")
        channel = await connection.channel()
        claims = await channel.get_queue(CLASSIC_CHAT_CLAIMS_QUEUE)

        async def hold(_claim: AbstractIncomingMessage) -> None:
            pass

        tag = await claims.consume(hold)  # a relay of the earlier version

        with pytest.raises(ClassicRelaysRunning, match="Stop every relay"):
            await make_relay().start()

        await claims.cancel(tag)  # it stopped: the next start drains, with nothing to move
        relay = make_relay()
        await relay.start()
        assert relay.is_ready()
        assert not await exists(connection, CLASSIC_CHAT_CLAIMS_QUEUE)
