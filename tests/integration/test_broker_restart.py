"""The broker node itself stops and starts (a private node): the edge recovers by itself.

Unlike a cut connection, a restart deletes the edge's exclusive queue and its bindings,
so recovery must declare and bind them again, for the users connected at that moment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher, connect
from services.ws_edge.server import EdgeServer
from services.ws_edge.settings import EdgeSettings
from tests.support.client import UPGRADE, Client
from tests.support.edge import edge_env, edge_on_private, until  # noqa: F401  (a fixture)
from tests.support.private_broker import PrivateBroker
from tests.support.rabbit import reconnected


async def test_edge_recovers_from_a_broker_restart(
    edge_on_private: EdgeServer,
    private_broker: PrivateBroker,
    private_amqp_url: str,
    token_for: Callable[..., str],
) -> None:
    edge = edge_on_private
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    bob = await Client.connect(edge.port, token_for("bob"))
    restored = reconnected(edge.connection)

    await asyncio.to_thread(private_broker.restart)
    await asyncio.wait_for(restored, 60)
    # Ready again once the held keys are bound to the new queue (not before: the events
    # published just below would find no binding).
    await asyncio.wait_for(edge.rebound(), 30)
    assert edge.is_ready()

    # The edge replays in band what was routed while it was away (docs/protocol.md 17.5):
    # nothing here, then replay.done.
    for client in (alice, bob):
        done = await client.recv()
        assert (done["type"], done["data"]["recovered"]) == ("replay.done", True), done

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


async def test_a_connect_storm_beyond_the_opening_bound_is_refused_at_once(
    private_broker: PrivateBroker, private_amqp_url: str, tmp_path: Path,
    token_for: Callable[..., str], caplog: pytest.LogCaptureFixture,
) -> None:
    # With the broker stopped no key can be bound, so sockets stay opening: a
    # deterministic stand-in for a storm that outruns the broker's binds.
    settings = EdgeSettings.from_env(edge_env(
        private_amqp_url, f"sqlite:///{tmp_path / 'w.db'}",
        WARREN_EDGE_MAX_OPENING="2", WARREN_EDGE_BIND_TIMEOUT_S="60",
    ))
    edge = EdgeServer(settings, CollectorRegistry())
    await edge.start()
    try:
        restored = reconnected(edge.connection)
        await asyncio.to_thread(private_broker.stop_app)
        url = f"ws://127.0.0.1:{edge.port}/ws?token="
        # Their upgrades are answered once their keys are bound: not before the restart.
        waiting = [asyncio.ensure_future(websocket_connect(url + token_for(user)))
                   for user in ("ann", "ben")]
        await until(lambda: edge.hub.opening == 2, "two upgrades waiting for their bindings")
        assert not any(upgrade.done() for upgrade in waiting)

        request = HTTPRequest(f"http://127.0.0.1:{edge.port}/ws?token={token_for('cat')}",
                              headers=UPGRADE)
        with pytest.raises(HTTPClientError) as refused, caplog.at_level(logging.DEBUG, "tornado.access"):
            await AsyncHTTPClient().fetch(request)
        response = refused.value.response
        assert response is not None and response.code == 503
        assert response.headers["Retry-After"] == "1"
        assert orjson.loads(response.body)["error"] == "overloaded"
        # Shed before Tornado routes it: counted, and no access-log line per refusal.
        assert [r for r in caplog.records if r.name == "tornado.access"] == []
        assert edge.metrics.handshakes_refused.labels("overloaded")._value.get() == 1
        # Only upgrades are shed: the probes and the API still answer.
        health = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{edge.port}/healthz")
        assert health.code == 200

        await asyncio.to_thread(private_broker.start_app)
        await asyncio.wait_for(restored, 60)
        for upgrade in waiting:  # upgraded and welcomed once their keys are bound
            socket = await asyncio.wait_for(upgrade, 30)
            message = await asyncio.wait_for(socket.read_message(), 30)
            assert message is not None
            welcome = orjson.loads(message)
            assert welcome["type"] == "welcome"
            socket.close()
        assert edge.hub.opening == 0
        retry = await Client.connect(edge.port, token_for("cat"))
        assert retry.welcome["data"]["user"] == "cat"
    finally:
        await edge.stop()
