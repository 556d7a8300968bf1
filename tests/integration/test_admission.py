"""A socket's upgrade is answered once its keys are bound and its user is read
(docs/protocol.md 5.1). Here the read is held up (the edge's one blocking thread is kept
busy) so that the upgrade waits in between, on a real edge and broker:

- an event for the socket that reaches the edge meanwhile is written right after
  ``welcome``, and a notification stored before the read is found by it;
- a client that leaves meanwhile gives back everything its upgrade took;
- a new broker connection meanwhile (a new queue) delays the ``welcome`` until the keys
  are bound to it, and the socket's position starts there.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

from shared.db import make_engine, session_factory
from shared.db.notifications import make_notification
from shared.messaging import ADDRESS_BROADCAST, Address, Envelope
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import EDGE_EXCHANGE
from services.ws_edge.server import EdgeServer
from tests.support.client import TIMEOUT, Client
from tests.support.edge import until
from tests.support.rabbit import BrokerAdmin, reconnected


@pytest.fixture
async def edge(make_edge: Callable[..., EdgeServer]) -> EdgeServer:
    server = make_edge(WARREN_EDGE_LOGIN_THREADS="1", WARREN_EDGE_MAX_SOCKETS_PER_USER="1")
    await server.start()
    return server


@pytest.fixture
def blocked(edge: EdgeServer) -> Iterator[threading.Event]:
    """The edge's only blocking thread kept busy until the event is set (at the latest
    when the test ends): every user read waits behind it."""
    assert edge.deps is not None
    gate = threading.Event()
    edge.deps.blocking.submit(gate.wait, TIMEOUT)
    yield gate
    gate.set()


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[Publisher]:
    connection = await connect(amqp_url, name="warren-test-admission")
    async with connection:
        yield await Publisher.open(connection)


def received(edge: EdgeServer) -> float:
    return float(sum(counter._value.get() for counter in edge.metrics.received.values()))


async def test_what_comes_while_the_upgrade_waits_for_its_user_follows_the_welcome(
    edge: EdgeServer, blocked: threading.Event, publisher: Publisher, database_url: str,
    token_for: Callable[..., str],
) -> None:
    opening = asyncio.ensure_future(Client.connect(edge.port, token_for("alice", ("team",))))
    await until(lambda: len(edge.hub.held()) == 1, "alice's keys bound, her user read waiting")
    engine = make_engine(database_url)
    try:
        with session_factory(engine).begin() as session:
            session.add(make_notification("t1-done", "alice", "excel.done", b'{"id":"t1-done"}'))
    finally:
        engine.dispose()
    live = [Envelope(type="test.event", to=to, sender=Address.service("test"), data={})
            for to in (Address.user("alice"), Address.group("team"), ADDRESS_BROADCAST)]
    for envelope in live:
        await publisher.publish_event(envelope)
    await until(lambda: received(edge) == len(live), "the events reached the edge")
    assert not opening.done()

    blocked.set()
    alice = await asyncio.wait_for(opening, TIMEOUT)
    assert alice.welcome["type"] == "welcome"
    # The held events first, in their order, then the notification the read found.
    assert [(await alice.recv())["id"] for _ in live] == [e.id for e in live]
    assert (await alice.recv())["id"] == "t1-done"


async def test_a_client_that_leaves_while_its_upgrade_waits_gives_everything_back(
    edge: EdgeServer, blocked: threading.Event, token_for: Callable[..., str],
) -> None:
    assert edge.deps is not None
    bindings, hub = edge.deps.bindings, edge.hub
    token = token_for("bob", ("team",))
    _, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    upgrade = WSConnection(ConnectionType.CLIENT)
    writer.write(upgrade.send(Request(host=f"127.0.0.1:{edge.port}", target=f"/ws?token={token}")))
    await until(lambda: len(hub.held()) == 1, "bob's keys bound, his user read waiting")
    assert (hub.slots("bob"), hub.opening, bindings.holders("group.team")) == (1, 1, 1)

    writer.close()  # the client goes before its upgrade is answered
    await writer.wait_closed()
    await until(lambda: hub.slots("bob") == 0, "the edge noticed the client left")
    assert (len(hub.held()), bindings.holders("user.bob"), bindings.holders("group.team")) == (
        0, 0, 0)

    blocked.set()
    await until(lambda: hub.opening == 0, "the upgrade's read ended")
    assert (len(hub), hub.slots("bob"), bindings.holders("user.bob")) == (0, 0, 0)
    # Its place among bob's sockets (one, here) is free again.
    bob = await Client.connect(edge.port, token)
    assert bob.welcome["data"]["user"] == "bob"


async def test_keys_bound_again_on_a_new_broker_connection_while_the_upgrade_waits(
    edge: EdgeServer, blocked: threading.Event, broker_admin: BrokerAdmin, vhost: str,
    amqp_url: str, token_for: Callable[..., str],
) -> None:
    assert edge.deps is not None and edge.consumer is not None
    opening = asyncio.ensure_future(Client.connect(edge.port, token_for("carol")))
    await until(lambda: len(edge.hub.held()) == 1, "carol's keys bound, her user read waiting")
    generation = edge.deps.bindings.generation
    restored = reconnected(edge.connection)
    await broker_admin.close_connections(vhost)  # a new connection: a new, empty queue
    await asyncio.wait_for(restored, TIMEOUT)
    await asyncio.wait_for(edge.rebound(), TIMEOUT)
    rebound_at = time.time()
    assert edge.deps.bindings.generation == generation + 1

    blocked.set()
    carol = await asyncio.wait_for(opening, TIMEOUT)
    # Her position is where her keys were bound to the new queue: what was routed to the
    # old one after it was lost is not hers to have.
    assert carol.welcome["data"]["position"] >= rebound_at
    queue = edge.consumer.queue_name
    assert "user.carol" in broker_admin.bindings(vhost, queue, EDGE_EXCHANGE)
    connection = await connect(amqp_url, name="warren-test-admission")
    async with connection:
        envelope = Envelope(type="test.event", to=Address.user("carol"),
                            sender=Address.service("test"), data={})
        await (await Publisher.open(connection)).publish_event(envelope)
    assert (await carol.recv())["id"] == envelope.id
