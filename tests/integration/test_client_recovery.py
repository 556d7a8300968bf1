"""warren.client recovering what it missed (docs/protocol.md 17, docs/clients.md
"Recovery"): a connection cut while events flow, resumed on another edge; a position an
application kept, given to a new client; a position the edge refuses; ``history()``.

Edges run as OS processes on the test's vhost. Events come from one publisher
(``Feed``, tests/support/history.py, numbers them per address), so the order per key
is defined and a loss, a repeat or a swap can be named. What is checked is what the
application receives, after the client's de-duplication.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from shared.messaging import ADDRESS_BROADCAST, Address, Envelope
from shared.messaging.broker import Publisher
from tests.support.edge import Spawn, spawn_edge  # noqa: F401  (a fixture)
from tests.support.history import Feed
from tests.support.recovery_audit import (
    TIMEOUT,
    Inbox,
    Watch,
    addressed,
    audit,
    instance_of,
    steady,
    url,
)
from tests.support.tcp_proxy import TcpProxy
from warren.client import Backoff, Client, Event, StateChange, WarrenError

RATE = 300  # events a second, in turn to the client's user, its group and broadcast

@pytest.fixture
async def closing() -> AsyncIterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    await asyncio.gather(*(client.close() for client in clients))


async def test_a_cut_connection_resumes_on_another_edge_with_every_event_once_in_order(
    spawn_edge: Spawn, publisher: Publisher, token_for: Callable[..., str],
    closing: list[Client],
) -> None:
    edge_a, edge_b = await spawn_edge(), await spawn_edge()
    to_a = await TcpProxy("127.0.0.1", edge_a.port).start()
    to_b = await TcpProxy("127.0.0.1", edge_b.port).start()
    to_b.cut()  # B answers only once the client has missed events
    mine = [Address.user("ursula"), Address.group("crew"), ADDRESS_BROADCAST]
    keys = {str(address) for address in mine}
    try:
        client = Client([url(to_a.port), url(to_b.port)], token=token_for("ursula", ("crew",)),
                        backoff=Backoff(base_s=0.05, cap_s=0.5))
        closing.append(client)
        watch = Watch()
        inbox = Inbox(client, watch)
        changes: list[StateChange] = []
        client.on_state(changes.append)
        client.on_state(watch.poke)
        first = await asyncio.wait_for(client.connect(), TIMEOUT)
        assert first.edge == await instance_of(edge_a)
        assert first.recovered is None and client.position == first.position

        feed = Feed(publisher, event_type="test.tick")
        stop = asyncio.Event()
        flowing = asyncio.create_task(steady(feed, mine, RATE, stop, watch))
        await watch.expect(lambda: len(inbox.events) >= RATE // 3, "events before the cut")
        to_a.cut()  # a reset: no close frame, as when a network or an edge goes away
        cut_at = len(feed.published)
        await watch.expect(lambda: len(feed.published) >= cut_at + RATE // 2,
                           "events published while the client is away")
        missed = len(feed.published) - cut_at
        to_b.restore()
        b = await instance_of(edge_b)
        await watch.expect(lambda: client.state == "connected" and client.welcome is not None
                           and client.welcome.edge == b, "the client resumed on edge B")
        resumed = len(feed.published)
        await watch.expect(lambda: len(feed.published) >= resumed + RATE // 2, "live events on B")
        stop.set()
        await flowing
        await watch.until(lambda: inbox.has_all(addressed(feed.published, keys)))
    finally:
        await to_a.close()
        await to_b.close()

    result = audit(inbox.events, feed.published, keys)
    assert result.ok, result
    welcome = client.welcome
    assert welcome is not None and welcome.recovered is True, welcome
    assert welcome.since is not None and first.position is not None
    assert welcome.since >= first.position
    assert "recovering" in [change.state for change in changes]
    # What it missed came by replay, not live: at least what was published while away.
    assert client.stats.replayed >= missed
    print(f"\npublished {len(feed.published)}, missed while away {missed}, replayed "
          f"{client.stats.replayed}, repeats dropped by the client {client.stats.duplicates}")


async def test_a_position_the_application_kept_recovers_in_a_new_client(
    spawn_edge: Spawn, publisher: Publisher, token_for: Callable[..., str],
    closing: list[Client],
) -> None:
    edge = await spawn_edge()
    token = token_for("vera", ("crew",))
    mine = [Address.user("vera"), Address.group("crew"), ADDRESS_BROADCAST]
    keys = {str(address) for address in mine}
    feed = Feed(publisher)
    watch = Watch()

    earlier = Client(url(edge.port), token=token)
    closing.append(earlier)
    had = Inbox(earlier, watch)
    await asyncio.wait_for(earlier.connect(), TIMEOUT)
    before = await feed.rounds(mine, 10)
    await watch.expect(lambda: had.has_all(before), "the first client's events")
    kept = earlier.position
    assert kept is not None and kept == before[-1].ts
    await earlier.close()

    missed = await feed.rounds([*mine, Address.user("walt")], 10)
    later = Client(url(edge.port), token=token, position=kept)
    closing.append(later)
    inbox = Inbox(later, watch)
    welcome = await asyncio.wait_for(later.connect(), TIMEOUT)
    assert (welcome.recovered, welcome.since) == (True, kept)
    await watch.expect(lambda: inbox.has_all(addressed(missed, keys)), "the missed events")
    after = await feed.rounds(mine, 2)  # live again
    await watch.expect(lambda: inbox.has_all(after), "live events after the replay")
    assert later.state == "connected"

    # A new client knows no ids yet: events up to ``window`` older than the position
    # come again, once each and in order (docs/clients.md says so); nothing older.
    again = [event for event in inbox.events if event.id in {e.id for e in before}]
    assert all(event.ts >= kept - welcome.window - 1e-6 for event in again)
    result = audit(inbox.events, [*again_envelopes(before, again), *missed, *after], keys)
    assert result.ok, result


def again_envelopes(published: Sequence[Envelope], again: Sequence[Event]) -> list[Envelope]:
    ids = {event.id for event in again}
    return [envelope for envelope in published if envelope.id in ids]


async def test_a_position_the_edge_refuses_starts_afresh_and_the_next_one_recovers(
    spawn_edge: Spawn, publisher: Publisher, token_for: Callable[..., str],
    closing: list[Client],
) -> None:
    edge = await spawn_edge()
    proxy = await TcpProxy("127.0.0.1", edge.port).start()
    try:
        future = time.time() + 3600  # more than window ahead of the edge's clock
        client = Client(url(proxy.port), token=token_for("xena"), position=future,
                        backoff=Backoff(base_s=0.05, cap_s=0.5))
        closing.append(client)
        watch = Watch()
        inbox = Inbox(client, watch)
        welcomes: list[StateChange] = []
        client.on_state(lambda change: welcomes.append(change) if change.welcome else None)
        client.on_state(watch.poke)
        refused = await asyncio.wait_for(client.connect(), TIMEOUT)
        assert (refused.recovered, refused.reason, refused.since) == (
            False, "invalid_position", future)
        assert client.state == "connected"
        assert client.position == refused.position and refused.position is not None
        assert refused.position < future

        feed = Feed(publisher)
        sent = await feed.rounds([Address.user("xena")], 3)
        await watch.expect(lambda: inbox.has_all(sent), "events on the first connection")
        proxy.cut()
        proxy.restore()
        await watch.expect(lambda: client.stats.connects == 2 and client.state == "connected",
                           "the reconnect")
    finally:
        await proxy.close()
    assert [(c.state, c.welcome.recovered) for c in welcomes if c.welcome] == [
        ("connected", False), ("recovering", True), ("connected", True)]
    assert client.welcome is not None and client.welcome.since == sent[-1].ts
    assert [event.id for event in inbox.events] == [envelope.id for envelope in sent]


async def test_history_gives_the_own_keys_events_oldest_first_and_refuses_another_users(
    spawn_edge: Spawn, publisher: Publisher, token_for: Callable[..., str],
    closing: list[Client],
) -> None:
    edge = await spawn_edge()
    mine = [Address.user("yuri"), Address.group("crew"), ADDRESS_BROADCAST]
    others = [Address.user("zoe"), Address.group("ops")]
    feed = Feed(publisher)
    await feed.rounds([*mine, *others], 5)
    client = Client(url(edge.port), token=token_for("yuri", ("crew",)))
    closing.append(client)
    await asyncio.wait_for(client.connect(), TIMEOUT)
    position = client.position

    for address in mine:
        expected = [e.id for e in addressed(feed.published, {str(address)})]
        whole = await client.history(str(address))
        assert whole.key == str(address)
        assert [event.id for event in whole.events] == expected
        assert whole.oldest == feed.published[0].ts  # the oldest event the stream holds
    own = addressed(feed.published, {"user:yuri"})
    newest = await client.history("user:yuri", limit=2)
    assert [event.id for event in newest.events] == [e.id for e in own[-2:]]
    recent = await client.history("user:yuri", since=own[2].ts)
    assert [event.id for event in recent.events] == [e.id for e in own[2:]]
    both = await client.history("user:yuri", since=own[1].ts, limit=2)
    assert [event.id for event in both.events] == [e.id for e in own[3:]]
    assert recent.events[0].data == {"key": "user:yuri", "n": 2}

    for foreign in ("user:zoe", "group:ops"):
        with pytest.raises(WarrenError) as refused:
            await client.history(foreign)
        assert refused.value.code == "forbidden"
    # A read beside the live events: nothing delivered, the position unmoved.
    assert client.stats.events == 0 and client.position == position
    assert client.state == "connected"
