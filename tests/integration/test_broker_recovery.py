"""A lost broker connection is recovered: sockets stay open, bindings return, delivery resumes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import EDGE_EXCHANGE
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.history import is_event
from tests.support.rabbit import BrokerAdmin, reconnected
from tests.support.tcp_proxy import TcpProxy


async def _readyz(port: int) -> int:
    try:
        return (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/readyz")).code
    except HTTPClientError as exc:
        return exc.code


async def _delivered_around_replay(amqp_url: str, to: Address, client: Client) -> None:
    """An event published to ``to`` now reaches ``client`` once, with the in-band replay of
    what was routed while the edge was away (docs/protocol.md 17.5), which is nothing
    here: replayed before ``replay.done`` if the pass was still settling when it was
    published (17.3, "A stream electing a leader"), held back until after it otherwise."""
    connection = await connect(amqp_url, name="warren-test-after-outage")
    async with connection:
        publisher = await Publisher.open(connection)
        event = Envelope(type="test.event", to=to, sender=Address.service("test"), data={})
        await publisher.publish_event(event)
        frames = [await client.recv(), await client.recv()]
    (done,) = [frame for frame in frames if not is_event(frame)]
    assert (done["type"], done["data"]["recovered"]) == ("replay.done", True), done
    assert [frame["id"] for frame in frames if is_event(frame)] == [event.id], frames


async def test_connection_loss_is_recovered_without_dropping_sockets(
    edge: EdgeServer,
    broker_admin: BrokerAdmin,
    vhost: str,
    amqp_url: str,
    token_for: Callable[..., str],
) -> None:
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    bob = await Client.connect(edge.port, token_for("bob"))
    assert await _readyz(edge.port) == 200

    restored = reconnected(edge.connection)

    await broker_admin.close_connections(vhost)
    await asyncio.wait_for(restored, 30)
    await asyncio.wait_for(edge.rebound(), 30)

    # The sockets never noticed, and the edge is ready again with its bindings back.
    assert await _readyz(edge.port) == 200
    assert {"broadcast", "user.alice", "group.team", "user.bob"} <= broker_admin.bindings(
        vhost, edge.consumer.queue_name, EDGE_EXCHANGE  # type: ignore[union-attr]
    )
    await _delivered_around_replay(amqp_url, Address.group("team"), alice)

    # Frames from clients are published again too, through the restored channel.
    reply = await bob.request({"type": "message.send", "ref": 1, "to": "user:alice", "data": {}})
    assert reply["type"] == "ack"
    assert (await alice.recv())["id"] == reply["data"]["id"]


async def test_an_edge_whose_queue_is_deleted_reconnects_and_delivers_again(
    edge: EdgeServer,
    broker_admin: BrokerAdmin,
    vhost: str,
    amqp_url: str,
    token_for: Callable[..., str],
) -> None:
    # The broker cancels the consumer of a deleted queue; only a new connection declares
    # the queue and binds the held keys again.
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    restored = reconnected(edge.connection)
    broker_admin.delete_queue(vhost, edge.consumer.queue_name)  # type: ignore[union-attr]
    await asyncio.wait_for(restored, 30)
    await asyncio.wait_for(edge.rebound(), 30)
    assert {"broadcast", "user.alice", "group.team"} <= broker_admin.bindings(
        vhost, edge.consumer.queue_name, EDGE_EXCHANGE  # type: ignore[union-attr]
    )
    await _delivered_around_replay(amqp_url, Address.user("alice"), alice)


async def test_socket_opened_during_outage_binds_after_recovery(
    make_edge: Callable[..., EdgeServer],
    broker_admin: BrokerAdmin,
    vhost: str,
    token_for: Callable[..., str],
) -> None:
    edge = make_edge()
    await edge.start()
    restored = reconnected(edge.connection)
    await broker_admin.close_connections(vhost)
    carol = await Client.connect(edge.port, token_for("carol"))
    await asyncio.wait_for(restored, 30)
    await asyncio.wait_for(edge.rebound(), 30)
    queue = edge.consumer.queue_name  # type: ignore[union-attr]
    assert "user.carol" in broker_admin.bindings(vhost, queue, EDGE_EXCHANGE)
    assert carol.welcome["data"]["user"] == "carol"


async def test_an_edge_stops_cleanly_when_its_broker_link_has_just_dropped(
    make_edge: Callable[..., EdgeServer], amqp_url: str, token_for: Callable[..., str]
) -> None:
    # The link drops as the edge stops, before aio-pika has noticed: cancelling the
    # consumer and closing its channels then meets a dead connection. The broker ends
    # them itself, so stopping must go on to the end instead of raising.
    url = urlsplit(amqp_url)
    proxy = await TcpProxy(url.hostname or "127.0.0.1", url.port or 5672).start()
    try:
        edge = make_edge(WARREN_AMQP_URL=urlunsplit(
            url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}")))
        await edge.start()
        alice = await Client.connect(edge.port, token_for("alice"))
        proxy.cut()
        await asyncio.wait_for(edge.stop(), 30)
        closed = await alice.closed()
        assert closed == (1001, "server shutting down")
    finally:
        await proxy.close()
