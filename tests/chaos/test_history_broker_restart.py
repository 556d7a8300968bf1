"""RabbitMQ restarts (a private node) while a client is away.

The history stream is durable: the events published before the restart are still in it
afterwards. The edge reconnects to the broker by itself, and the client, reconnecting
with its position, recovers what it missed before the restart and after it, each once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared.config import HistorySettings
from shared.messaging import ADDRESS_BROADCAST, Address
from shared.messaging.broker import Publisher, connect
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.edge import edge_on_private  # noqa: F401  (a fixture)
from tests.support.history import (
    Feed,
    delivery_problems,
    position,
    read_recovery,
    since,
    stream_head,
)
from tests.support.private_broker import PrivateBroker
from tests.support.rabbit import reconnected

WINDOW_S = HistorySettings().window_s


async def test_a_client_away_over_a_broker_restart_recovers_what_it_missed(
    edge_on_private: EdgeServer,
    private_broker: PrivateBroker,
    private_amqp_url: str,
    token_for: Callable[..., str],
) -> None:
    edge = edge_on_private
    token = token_for("alice", ("team",))
    mine = [Address.user("alice"), Address.group("team"), ADDRESS_BROADCAST]
    keys = {str(address) for address in mine}
    everywhere = [*mine, Address.user("bob"), Address.group("ops")]

    connection = await connect(private_amqp_url, name="warren-test-publisher")
    async with connection:
        feed = Feed(await Publisher.open(connection))
        first = await Client.connect(edge.port, token)
        sent = [e for e in await feed.rounds(everywhere, 2) if str(e.to) in keys]
        had = [first.welcome, *[await first.recv() for _ in sent]]
        first.close()
        await first.closed()
        at = position(had)
        assert at is not None
        missed_before = [e for e in await feed.rounds(everywhere, 4) if str(e.to) in keys]
        head_before = await stream_head(private_amqp_url)

        restored = reconnected(edge.connection)
        await asyncio.to_thread(private_broker.restart)
        await asyncio.wait_for(restored, 60)
        await asyncio.wait_for(edge.rebound(), 30)
        assert edge.is_ready()

    # Nothing of the stream was lost with the restart.
    assert await stream_head(private_amqp_url) == head_before

    connection = await connect(private_amqp_url, name="warren-test-publisher-after")
    async with connection:
        feed.publisher = await Publisher.open(connection)
        missed_after = [e for e in await feed.rounds(everywhere, 2) if str(e.to) in keys]

        second = await Client.connect(edge.port, token, query=since(at))
        recovery = await read_recovery(second)
        assert recovery.recovered is True, recovery.welcome
        expected = [e.id for e in feed.published if str(e.to) in keys and e.ts >= at - WINDOW_S]
        replayed = [frame["id"] for frame in recovery.replayed]
        assert replayed == expected
        assert {e.id for e in missed_before + missed_after} <= set(replayed)
        assert recovery.done is not None and recovery.done["data"]["events"] == len(replayed)

        live = [e for e in await feed.rounds(everywhere, 1) if str(e.to) in keys]
        frames = [await second.recv() for _ in live]
        assert [frame["id"] for frame in frames] == [e.id for e in live]
        session = [recovery.welcome, *recovery.replayed, recovery.done, *frames]
        assert delivery_problems([had, session], feed.published, keys, window=WINDOW_S) == []
