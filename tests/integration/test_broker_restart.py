"""The broker node itself stops and starts (a private node): the edge recovers by itself.

Unlike a cut connection, a restart deletes the edge's exclusive queue and its bindings,
so recovery must declare and bind them again, for the users connected at that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher, connect
from services.ws_edge.server import EdgeServer
from services.ws_edge.settings import EdgeSettings
from tests.support.client import Client
from tests.support.edge import edge_env
from tests.support.private_broker import PrivateBroker


@pytest.fixture
async def edge_on_private(private_amqp_url: str, tmp_path: Path) -> AsyncIterator[EdgeServer]:
    settings = EdgeSettings.from_env(edge_env(private_amqp_url, f"sqlite:///{tmp_path / 'w.db'}"))
    server = EdgeServer(settings, CollectorRegistry())
    await server.start()
    yield server
    await server.stop()


async def test_edge_recovers_from_a_broker_restart(
    edge_on_private: EdgeServer,
    private_broker: PrivateBroker,
    private_amqp_url: str,
    token_for: Callable[..., str],
) -> None:
    edge = edge_on_private
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    bob = await Client.connect(edge.port, token_for("bob"))
    assert edge.connection is not None
    restored = asyncio.get_running_loop().create_future()
    edge.connection.reconnect_callbacks.add(lambda *_: restored.done() or restored.set_result(None))

    await asyncio.to_thread(private_broker.restart)
    await asyncio.wait_for(restored, 60)
    assert edge.is_ready()

    connection = await connect(private_amqp_url, name="warren-test-after-restart")
    async with connection:
        publisher = await Publisher.open(connection)
        for to, client in ((Address.group("team"), alice), (Address.user("bob"), bob)):
            envelope = Envelope(type="test.event", to=to, sender=Address.service("test"), data={})
            await publisher.publish_event(envelope)
            assert (await client.recv())["id"] == envelope.id
    # The client's own frames reach the broker again too.
    reply = await bob.request({"type": "message.send", "ref": 1, "to": "user:alice", "data": {}})
    assert reply["type"] == "ack"
    assert (await alice.recv())["id"] == reply["data"]["id"]
