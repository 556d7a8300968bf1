"""Recovery over raw sockets (docs/protocol.md 17.2, 17.3): a client that reconnects
with its position gets what it missed, once and in order, then live events; a position
the stream no longer holds, or an edge without history, gets nothing replayed.

Events come from one publisher (``tests/support/history.py``, ``Feed``), numbered per
address, so the order per key is defined and a gap or a repeat can be named.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import aio_pika
import pytest

from shared.config import HistorySettings
from shared.messaging import ADDRESS_BROADCAST, Address
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import HISTORY_STREAM
from services.ws_edge.server import EdgeServer
from tests.chaos.watch import Watcher, until
from tests.support.client import Client
from tests.support.edge import Spawn, spawn_edge  # noqa: F401  (a fixture)
from tests.support.feed_process import FeedProcess
from tests.support.history import (
    Feed,
    Frame,
    StreamHead,
    delivery_problems,
    is_event,
    position,
    read_recovery,
    since,
    stream_head,
)

WINDOW_S = HistorySettings().window_s  # the edges here run with the default


async def test_a_client_recovers_what_it_missed_on_another_edge(
    spawn_edge: Spawn, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    edge_a, edge_b = await spawn_edge(), await spawn_edge()
    token = token_for("alice", ("team",))
    mine = [Address.user("alice"), Address.group("team"), ADDRESS_BROADCAST]
    keys = {str(address) for address in mine}
    everywhere = [*mine, Address.user("bob"), Address.group("ops")]
    feed = Feed(publisher)

    first = await Client.connect(edge_a.port, token)
    sent = [e for e in await feed.rounds(everywhere, 3) if str(e.to) in keys]
    had = [first.welcome, *[await first.recv() for _ in sent]]
    assert [frame["id"] for frame in had[1:]] == [e.id for e in sent]
    first.close()
    await first.closed()
    at = position(had)
    assert at == sent[-1].ts

    missed = [e for e in await feed.rounds(everywhere, 5) if str(e.to) in keys]

    connecting = time.time()
    second = await Client.connect(edge_b.port, token, query=since(at))
    recovery = await read_recovery(second)
    done_at = time.time()
    welcome = recovery.welcome["data"]
    assert (welcome["recovered"], welcome["window"]) == (True, WINDOW_S), welcome
    assert "reason" not in welcome, welcome
    # Exactly the kept events for its keys from ``since - window`` on, in stream order:
    # the ones it missed, after those it had that are within the window.
    expected = [e.id for e in feed.published if str(e.to) in keys and e.ts >= at - WINDOW_S]
    assert [frame["id"] for frame in recovery.replayed] == expected
    assert {e.id for e in missed} <= set(expected)
    assert recovery.done is not None
    done = recovery.done["data"]
    assert done["events"] == len(recovery.replayed)
    # The edge's time when the keys were bound: after the missed events, before the frame.
    assert max(e.ts for e in missed) <= done["position"], done
    assert connecting <= done["position"] <= done_at, (connecting, done, done_at)

    after = [e for e in await feed.rounds(everywhere, 2) if str(e.to) in keys]
    live = [await second.recv() for _ in after]
    assert [frame["id"] for frame in live] == [e.id for e in after]
    session = [recovery.welcome, *recovery.replayed, recovery.done, *live]
    assert delivery_problems([had, session], feed.published, keys, window=WINDOW_S) == []


async def test_replay_starts_at_since_minus_window_by_the_events_ts(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    token = token_for("alice")
    alice = Address.user("alice")
    feed = Feed(publisher)
    first = await Client.connect(edge.port, token)
    had = await feed.publish(alice)
    assert (await first.recv())["id"] == had.id
    first.close()
    await first.closed()
    # Routed after the position, but stamped by a clock far behind: older than the window.
    behind = await feed.publish(alice, ts=had.ts - 10 * WINDOW_S)
    missed = await feed.publish(alice)

    second = await Client.connect(edge.port, token, query=since(had.ts))
    recovery = await read_recovery(second)
    assert recovery.recovered is True, recovery.welcome
    replayed = [frame["id"] for frame in recovery.replayed]
    assert behind.id not in replayed
    assert replayed == [had.id, missed.id]


async def test_without_since_nothing_changes(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    feed = Feed(publisher)
    await feed.publish(Address.user("alice"))  # in the stream, not for a later socket
    before = time.time()
    client = await Client.connect(edge.port, token_for("alice"))
    welcome = client.welcome["data"]
    assert "recovered" not in welcome and "reason" not in welcome, welcome
    assert welcome["window"] == WINDOW_S
    assert before <= welcome["position"] <= time.time()
    live = await feed.publish(Address.user("alice"))
    assert (await client.recv())["id"] == live.id  # no replay, no replay.done


# -- the switch from replay to live ----------------------------------------------

CLIENTS = 30
GROUPS = 3
ROUNDS = 2  # each client reconnects this many times, alternating edges
LANES = 4  # concurrent publishing loops, each with keys of its own (Feed.flow)
AFTER_EVENTS = 2000
STORM_WAIT_S = 60.0  # published after the last recovery is done, before the end


def event_to(key: str) -> Callable[[Frame], bool]:
    return lambda frame: is_event(frame) and frame["to"] == key


def with_id(id_: str) -> Callable[[Frame], bool]:
    return lambda frame: frame.get("id") == id_


def replay_done(frame: Frame) -> bool:
    return frame.get("type") == "replay.done" and not is_event(frame)


def frames_of(watcher: Watcher) -> list[Frame]:
    """Every frame of a watched socket, ``welcome`` first (read by the watcher itself
    when it was not by ``Client.connect``)."""
    return [watcher.welcome, *watcher.frames] if watcher.welcome else list(watcher.frames)


def replay_problems(frames: list[Frame]) -> list[str]:
    """A recovery session: ``welcome`` with ``recovered: true``, only events up to
    ``replay.done``, which counts them."""
    welcome = frames[0]
    if welcome["data"].get("recovered") is not True:
        return [f"not recovered: {welcome}"]
    for index, frame in enumerate(frames[1:], 1):
        if replay_done(frame):
            if frame["data"]["events"] != index - 1:
                return [f"replay.done says {frame['data']['events']}, {index - 1} were replayed"]
            return []
        if not is_event(frame):
            return [f"a {frame.get('type')} frame before replay.done"]
    return ["no replay.done"]


async def test_the_switch_from_replay_to_live_under_a_high_publish_rate(
    spawn_edge: Spawn, amqp_url: str, token_for: Callable[..., str]
) -> None:
    edges = [await spawn_edge(), await spawn_edge()]
    users = [f"u{i}" for i in range(CLIENTS)]
    group_of = {user: f"g{i % GROUPS}" for i, user in enumerate(users)}
    tokens = {user: token_for(user, (group_of[user],)) for user in users}
    keys = {user: {f"user:{user}", f"group:{group_of[user]}", "broadcast"} for user in users}
    addresses = [
        *(f"user:{user}" for user in users), *(f"group:g{i}" for i in range(GROUPS)), "broadcast"
    ]
    sessions: dict[str, list[list[Frame]]] = {user: [] for user in users}
    clients = await asyncio.gather(*(Client.connect(edges[0].port, tokens[u]) for u in users))
    watching = {user: Watcher(client) for user, client in zip(users, clients)}

    async def has_every_key(user: str) -> None:
        for key in keys[user]:
            await watching[user].wait_for(event_to(key))

    replayed: list[int] = []

    async def reconnect(index: int, user: str, round_: int) -> None:
        watcher = watching[user]
        await watcher.close()
        sessions[user].append(frames_of(watcher))
        at = position(itertools.chain.from_iterable(sessions[user]))
        assert at is not None
        edge = edges[(index + round_) % 2]
        # The welcome waits for the pass that serves it, and a pass for the one before:
        # under a storm on a busy machine that is longer than Client's own wait.
        client = await Client.connect(
            edge.port, tokens[user], query=since(at), expect_welcome=False
        )
        watching[user] = fresh = Watcher(client)
        done = await fresh.wait_for(replay_done, STORM_WAIT_S)
        replayed.append(done["data"]["events"])

    feed = await FeedProcess(amqp_url, addresses, LANES).start()
    try:
        await asyncio.gather(*(has_every_key(user) for user in users))
        storms: list[float] = []
        for round_ in range(1, ROUNDS + 1):
            storm = time.monotonic()
            await asyncio.gather(*(reconnect(i, user, round_) for i, user in enumerate(users)))
            storms.append(time.monotonic() - storm)
        target = len(feed.published) + AFTER_EVENTS
        await until(lambda: len(feed.published) >= target, 120, f"{AFTER_EVENTS} more events")
        await feed.stop()
    finally:
        await feed.kill()
    published = feed.published
    rate = len(published) / (published[-1].ts - published[0].ts)

    last = {str(envelope.to): envelope.id for envelope in feed.published}
    for user in users:
        for key in keys[user]:
            await watching[user].wait_for(with_id(last[key]))
        await watching[user].close()
        sessions[user].append(frames_of(watching[user]))

    problems = {
        user: [
            *(p for frames in sessions[user][1:] for p in replay_problems(frames)),
            *delivery_problems(sessions[user], feed.published, keys[user], window=WINDOW_S),
        ]
        for user in users
    }
    assert {user: found for user, found in problems.items() if found} == {}
    print(
        f"\n{len(feed.published)} events at {rate:.0f}/s; {CLIENTS} clients x {ROUNDS} "
        f"recoveries, storms {', '.join(f'{s:.2f} s' for s in storms)}; replayed per "
        f"recovery min {min(replayed)} median {sorted(replayed)[len(replayed) // 2]} "
        f"max {max(replayed)}"
    )


# -- when nothing is replayed ------------------------------------------------------

TINY_STREAM = {
    "WARREN_HISTORY_MAX_BYTES": "6000",
    "WARREN_HISTORY_SEGMENT_BYTES": "1500",
    # No window: a position is compared with the stream's oldest event as it is.
    "WARREN_HISTORY_WINDOW_S": "0",
}


async def test_a_position_the_stream_no_longer_holds_replays_nothing(
    make_edge: Callable[..., EdgeServer], amqp_url: str, publisher: Publisher,
    token_for: Callable[..., str],
) -> None:
    edge = make_edge(**TINY_STREAM)
    await edge.start()
    token = token_for("alice")
    alice = Address.user("alice")
    feed = Feed(publisher)

    async def dropped() -> StreamHead | None:
        await feed.rounds([alice], 10)
        head = await stream_head(amqp_url)
        return head if head.offset > 0 else None

    await until(dropped, 60, "the stream's retention dropped a segment")

    async def answer(position: float | None) -> tuple[StreamHead, Client] | None:
        """The edge's answer to ``position`` (default: the oldest event's), while the
        stream's head stayed put (the edge's own markers can start a segment, and so
        drop the oldest one)."""
        head = await stream_head(amqp_url)
        assert head.event is not None
        at = head.event.ts if position is None else position
        client = await Client.connect(edge.port, token, query=since(at))
        if await stream_head(amqp_url) != head:
            client.close()
            return None
        return head, client

    gone = feed.published[0]
    head, too_old = await until(lambda: answer(gone.ts), 30, "an answer with a still head")
    assert head.event is not None
    welcome = too_old.welcome["data"]
    assert (welcome["recovered"], welcome["reason"]) == (False, "too_old"), welcome
    assert welcome["oldest"] == head.event.ts, (welcome, head)

    # The newest event the stream dropped is too old too; its oldest event is not.
    index = next(i for i, e in enumerate(feed.published) if e.id == head.event.id)
    newest_gone = feed.published[index - 1]
    head, just_gone = await until(lambda: answer(newest_gone.ts), 30, "an answer with a still head")
    assert just_gone.welcome["data"]["reason"] == "too_old", just_gone.welcome
    head, kept = await until(lambda: answer(None), 30, "an answer with a still head")
    assert head.event is not None
    recovery = await read_recovery(kept)
    assert recovery.recovered is True, recovery.welcome
    index = next(i for i, e in enumerate(feed.published) if e.id == head.event.id)
    assert [f["id"] for f in recovery.replayed] == [e.id for e in feed.published[index:]]

    # Nothing replayed, no replay.done: the next frame is a live event published now.
    marker = await feed.publish(alice)
    for client in (too_old, just_gone, kept):
        assert (await client.recv())["id"] == marker.id


async def test_with_history_off_welcome_says_so_and_nothing_is_replayed(
    make_edge: Callable[..., EdgeServer], amqp_url: str, token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_HISTORY="off")
    await edge.start()
    connection = await connect(amqp_url, name="warren-test-publisher")
    async with connection:
        feed = Feed(await Publisher.open(connection, HistorySettings(enabled=False)))
        alice = Address.user("alice")
        missed = await feed.publish(alice)
        client = await Client.connect(edge.port, token_for("alice"), query=since(missed.ts - 1))
        welcome = client.welcome["data"]
        assert (welcome["recovered"], welcome["reason"]) == (False, "history_off"), welcome
        marker = await feed.publish(alice)
        assert (await client.recv())["id"] == marker.id

        # Edges without history do not declare the stream.
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(HISTORY_STREAM, passive=True)
