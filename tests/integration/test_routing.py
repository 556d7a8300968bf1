"""Events reach exactly the right sockets: users, groups, broadcast, several tabs."""

from __future__ import annotations

from collections.abc import Callable

import aio_pika

from shared.messaging import ADDRESS_BROADCAST, Address, Envelope, encode, user_key
from shared.messaging.broker import Publisher, connect, declare_exchanges
from shared.messaging.names import EDGE_EXCHANGE, EVENTS_DEAD_LETTER_QUEUE
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.rabbit import BrokerAdmin

SERVICE = Address.service("test")


def event(to: Address, **data: object) -> Envelope:
    return Envelope(type="test.event", to=to, sender=SERVICE, data=dict(data))


async def test_user_event_reaches_every_tab_of_that_user_only(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    alice_tabs = [await Client.connect(edge.port, token_for("alice")) for _ in range(3)]
    bob = await Client.connect(edge.port, token_for("bob"))

    sent = event(Address.user("alice"), n=1)
    await publisher.publish_event(sent)
    for tab in alice_tabs:
        got = await tab.recv()
        assert got == sent.to_dict()

    # Bob's next frame is his own event, not Alice's: nothing else was queued before it.
    marker = event(Address.user("bob"), n=2)
    await publisher.publish_event(marker)
    assert (await bob.recv())["id"] == marker.id


async def test_group_event_reaches_members_only(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    members = [await Client.connect(edge.port, token_for(f"m{i}", ("team",))) for i in range(4)]
    outsider = await Client.connect(edge.port, token_for("outsider", ("other",)))

    sent = event(Address.group("team"), hello="team")
    await publisher.publish_event(sent)
    for member in members:
        assert (await member.recv())["id"] == sent.id

    marker = event(Address.group("other"))
    await publisher.publish_event(marker)
    assert (await outsider.recv())["id"] == marker.id


async def test_broadcast_reaches_every_socket_once(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    clients = [await Client.connect(edge.port, token_for(f"u{i}", ("g",))) for i in range(5)]
    first, second = event(ADDRESS_BROADCAST, n=1), event(ADDRESS_BROADCAST, n=2)
    await publisher.publish_event(first)
    await publisher.publish_event(second)
    for client in clients:
        assert [(await client.recv())["id"], (await client.recv())["id"]] == [first.id, second.id]


async def test_event_is_forwarded_exactly_as_published(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    client = await Client.connect(edge.port, token_for("alice"))
    sent = event(Address.user("alice"), text="héllo ✓", nested={"list": [1, 2.5, None]})
    await publisher.publish_event(sent)
    got = await client.recv()
    assert got == {
        "v": 1,
        "id": sent.id,
        "type": "test.event",
        "ts": sent.ts,
        "to": "user:alice",
        "from": "service:test",
        "data": {"text": "héllo ✓", "nested": {"list": [1, 2.5, None]}},
    }


async def test_bindings_follow_held_sockets(
    edge: EdgeServer,
    broker_admin: BrokerAdmin,
    vhost: str,
    token_for: Callable[..., str],
    publisher: Publisher,
) -> None:
    queue = edge.consumer.queue_name  # type: ignore[union-attr]
    assert broker_admin.bindings(vhost, queue, EDGE_EXCHANGE) == {"broadcast"}

    tab1 = await Client.connect(edge.port, token_for("alice", ("team",)))
    tab2 = await Client.connect(edge.port, token_for("alice", ("team",)))
    assert broker_admin.bindings(vhost, queue, EDGE_EXCHANGE) == {"broadcast", "user.alice", "group.team"}

    tab1.close()
    await tab1.closed()
    # Still held by the second tab: an event for Alice still arrives there.
    sent = event(Address.user("alice"))
    await publisher.publish_event(sent)
    assert (await tab2.recv())["id"] == sent.id
    assert {"user.alice", "group.team"} <= broker_admin.bindings(vhost, queue, EDGE_EXCHANGE)

    tab2.close()
    await tab2.closed()
    await _until_no_holders(edge)
    assert broker_admin.bindings(vhost, queue, EDGE_EXCHANGE) == {"broadcast"}


async def test_edge_receives_no_traffic_for_users_it_does_not_hold(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    client = await Client.connect(edge.port, token_for("alice"))
    for _ in range(5):
        await publisher.publish_event(event(Address.user("nobody-here")))
        await publisher.publish_event(event(Address.group("no-members")))
    marker = event(Address.user("alice"))
    await publisher.publish_event(marker)
    assert (await client.recv())["id"] == marker.id
    received = edge.metrics.received
    assert received[Address.user("x").kind]._value.get() == 1  # only the marker
    assert received[Address.group("x").kind]._value.get() == 0


async def test_invalid_events_are_dead_lettered_and_delivery_goes_on(
    make_edge: Callable[..., EdgeServer], amqp_url: str, token_for: Callable[..., str]
) -> None:
    # A prefetch of 2: were any event left unacknowledged (invalid ones in a batch
    # included), delivery would stop after two.
    edge = make_edge(WARREN_EDGE_PREFETCH="2")
    await edge.start()
    alice = await Client.connect(edge.port, token_for("alice"))
    sent = [event(Address.user("alice"), n=n) for n in range(10)]
    connection = await connect(amqp_url, name="warren-test-raw-publisher")
    async with connection:
        channel = await connection.channel()
        events, _commands = await declare_exchanges(channel)
        for envelope in sent:
            for body in (encode(envelope), b"not an envelope"):
                await events.publish(aio_pika.Message(body), routing_key=user_key("alice"))
        assert [(await alice.recv())["id"] for _ in sent] == [e.id for e in sent]
        dead = await channel.declare_queue(EVENTS_DEAD_LETTER_QUEUE, durable=True)
        bodies = []
        for _ in sent:
            message = await dead.get(timeout=10)
            await message.ack()
            bodies.append(message.body)
    assert bodies == [b"not an envelope"] * len(sent)
    assert edge.metrics.events_rejected._value.get() == len(sent)


async def _until_no_holders(edge: EdgeServer) -> None:
    assert edge.deps is not None
    await edge.deps.bindings.drain()
