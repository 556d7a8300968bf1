"""The edge's broker connection breaks and comes back while its sockets stay open
(docs/protocol.md 17.5, docs/reliability.md 2.1 and 2.6).

The edge holds each open socket's live events back from the loss on, binds the sockets'
keys again on the new connection, then replays to every socket, in band and in one pass
over the history stream for all of them, the kept events routed since the last event it
had fanned out (and the window before it), then ``replay.done`` with ``recovered``, then
the live events it held back. The sockets never close. With history off, or a gap the
stream no longer holds, ``replay.done`` says ``recovered: false`` and why, first.

The connection is broken two ways: a TCP proxy between the edge and the machine's broker
is cut and restored (the test's publisher, connected straight to the broker, publishes
meanwhile, so events are certainly routed while the edge has no queue), and a private
RabbitMQ node is restarted while events flow.

A stream electing a new leader writes an event its publisher's channel sent to the old
one only when that channel sends it again, possibly after a pass's marker (docs/protocol.md
17.3, "The switch from replay to live"). The test's own writer plays that late write; the
pass of an in-band replay, and of a recovery whose marker the broker confirmed late (the
proxy slowed down), reads up to a second marker, and replays it.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from shared.config import HistorySettings
from shared.messaging import ADDRESS_BROADCAST, Address, Envelope
from shared.messaging.broker import BrokerUnavailable, Publisher, connect
from services.ws_edge.server import EdgeServer
from services.ws_edge.settings import EdgeSettings
from tests.support.arrivals import Arrivals
from tests.support.client import Client
from tests.support.edge import edge_env, edge_on_private  # noqa: F401  (a fixture)
from tests.chaos.watch import until
from tests.support.history import (
    SERVICE,
    Feed,
    StreamWriter,
    is_event,
    read_recovery,
    since,
    stream_head,
)
from tests.support.inband import client_problems, gap_problems
from tests.support.private_broker import PrivateBroker
from tests.support.tcp_proxy import TcpProxy
from warren.client import Client as WarrenClient
from warren.client import Event, Recovery, StateChange

WINDOW_S = HistorySettings().window_s
WAIT_S = 60.0
QUICK = {"WARREN_EDGE_CATALOGUE_WAIT_S": "0"}  # no service to wait for

ALICE, TEAM, OPS = Address.user("alice"), Address.group("team"), Address.group("ops")
ALICE_KEYS = frozenset({str(ALICE), str(TEAM), str(ADDRESS_BROADCAST)})
EVERYWHERE = [ALICE, TEAM, ADDRESS_BROADCAST, Address.user("bob"), OPS]

Build = Callable[..., Awaitable[tuple[EdgeServer, TcpProxy]]]


@pytest.fixture
async def edge_behind_proxy(amqp_url: str, database_url: str) -> AsyncIterator[Build]:
    """In-process edges that reach the test's vhost through a TCP proxy the test cuts."""
    built: list[tuple[EdgeServer, TcpProxy]] = []
    parsed = urllib.parse.urlsplit(amqp_url)

    async def build(**overrides: str) -> tuple[EdgeServer, TcpProxy]:
        proxy = await TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 5672).start()
        netloc = f"{parsed.username}:{parsed.password}@127.0.0.1:{proxy.port}"
        url = urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
        settings = EdgeSettings.from_env(edge_env(url, database_url, **QUICK, **overrides))
        edge = EdgeServer(settings, CollectorRegistry())
        built.append((edge, proxy))
        await edge.start()
        return edge, proxy

    yield build
    for edge, proxy in built:
        await edge.stop()
        await proxy.close()


def lost(edge: EdgeServer) -> asyncio.Future[None]:
    """Done when the edge's broker connection is next lost."""
    assert edge.connection is not None
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(*_args: object) -> None:
        if not future.done():
            future.set_result(None)

    edge.connection.close_callbacks.add(done)
    return future


def sample(edge: EdgeServer, name: str, **labels: str) -> float:
    return edge.metrics.registry.get_sample_value(name, labels) or 0.0


def replayed(arrivals: Arrivals) -> Callable[[], bool]:
    return lambda: bool(arrivals.of_type("replay.done"))


def received(arrivals: Arrivals, ids: set[str]) -> Callable[[], bool]:
    return lambda: ids <= {frame["id"] for _at, frame in arrivals.events()}


class Delivered:
    """What a Python client delivers, read in the background; waits for a condition."""

    def __init__(self, client: WarrenClient) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._subscription = client.events()  # before connect(): nothing is missed
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self._subscription:
            self.events.append(event)
            self._changed.set()

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), WAIT_S)
        except asyncio.TimeoutError:
            raise AssertionError(f"not within {WAIT_S} s: {what}") from None

    async def close(self) -> None:
        self._subscription.close()
        await self._reader


async def test_open_sockets_get_what_was_routed_while_their_edge_had_no_broker_in_one_pass(
    edge_behind_proxy: Build, amqp_url: str, token_for: Callable[..., str],
) -> None:
    edge, proxy = await edge_behind_proxy()
    # Alice, and ten members of `team` (their own user keys get nothing), each a raw
    # socket; and alice once more through the Python client.
    sockets = {"alice": await Client.connect(edge.port, token_for("alice", ("team",)))}
    for n in range(10):
        sockets[f"m{n}"] = await Client.connect(edge.port, token_for(f"m{n}", ("team",)))
    keys = {user: frozenset({f"user:{user}", str(TEAM), str(ADDRESS_BROADCAST)})
            for user in sockets}
    arrivals = {user: Arrivals(socket) for user, socket in sockets.items()}
    python = WarrenClient(f"ws://127.0.0.1:{edge.port}/ws",
                          token=token_for("alice", ("team",)), refresh=False)
    recoveries: list[Recovery] = []
    states: list[StateChange] = []
    python.on_recovery(recoveries.append)
    python.on_state(states.append)
    delivered = Delivered(python)
    await asyncio.wait_for(python.connect(), WAIT_S)
    passes = sample(edge, "warren_edge_history_passes_total")

    connection = await connect(amqp_url, name="warren-test-publisher")
    try:
        feed = Feed(await Publisher.open(connection))
        await feed.rounds(EVERYWHERE, 3)
        last = feed.last(str(ADDRESS_BROADCAST)).id
        await arrivals["alice"].until(
            lambda: any(f["id"] == last for _, f in arrivals["alice"].events()), WAIT_S,
            "the events before the cut, live")

        gone = lost(edge)
        proxy.cut()
        await asyncio.wait_for(gone, WAIT_S)
        # Routed while the edge has no queue: none of these can reach it live.
        during = {e.id for e in await feed.rounds(EVERYWHERE, 5)}
        proxy.restore()
        # Events go on flowing while the edge reconnects, binds and replays.
        stop = asyncio.Event()
        flowing = asyncio.create_task(feed.flow(EVERYWHERE, stop, lanes=1))
        try:
            for user, arrival in arrivals.items():
                await arrival.until(replayed(arrival), WAIT_S, f"{user}'s in-band replay.done")
        finally:
            stop.set()
            await flowing
        await feed.rounds(EVERYWHERE, 2)
        finals = {key: feed.last(key).id for key in {str(a) for a in EVERYWHERE}}
        for user, arrival in arrivals.items():
            wanted = {finals[key] for key in keys[user] if key in finals}
            await arrival.until(received(arrival, wanted), WAIT_S,
                                f"{user}'s last event of each key")
        wanted = {finals[key] for key in ALICE_KEYS}
        await delivered.until(lambda: wanted <= {e.id for e in delivered.events},
                              "the Python client's last event of each key")
    finally:
        await connection.close()

    for user, arrival in arrivals.items():
        assert not arrival.closed.is_set(), (user, sockets[user].connection.close_code)
        frames = [frame for _at, frame in arrival.frames]
        dones = [frame for frame in frames if not is_event(frame)]
        assert [frame["type"] for frame in dones] == ["replay.done"], dones
        data = dones[0]["data"]
        assert data["recovered"] is True and data["events"] > 0, data
        assert "reason" not in data and isinstance(data["since"], float), data
        problems = gap_problems(frames, feed.published, keys[user], window=WINDOW_S)
        assert problems == [], (user, problems)
        # What was routed during the cut came with the replay, before replay.done.
        index = frames.index(dones[0])
        before_done = {frame["id"] for frame in frames[:index] if is_event(frame)}
        mine = {e.id for e in feed.published if e.id in during and str(e.to) in keys[user]}
        assert mine and mine <= before_done, user

    await delivered.close()
    await python.close()
    assert client_problems(delivered.events, feed.published, ALICE_KEYS) == []
    assert "reconnecting" not in [change.state for change in states], states
    assert [r.in_band for r in recoveries] == [False, True], recoveries
    assert recoveries[1].recovered is True and recoveries[1].replayed, recoveries[1]
    assert python.stats.in_band_recovered == 1 and python.stats.duplicates > 0, python.stats
    # One pass over the stream served every socket's replay.
    assert sample(edge, "warren_edge_history_passes_total") - passes == 1
    assert sample(edge, "warren_edge_inband_recoveries_total", outcome="recovered") \
        == len(sockets) + 1


async def test_with_history_off_the_open_socket_is_told_what_it_missed_is_lost(
    edge_behind_proxy: Build, amqp_url: str, token_for: Callable[..., str],
) -> None:
    edge, proxy = await edge_behind_proxy(WARREN_HISTORY="off")
    socket = await Client.connect(edge.port, token_for("alice", ("team",)))
    arrivals = Arrivals(socket)
    python = WarrenClient(f"ws://127.0.0.1:{edge.port}/ws",
                          token=token_for("alice", ("team",)), refresh=False)
    recoveries: list[Recovery] = []
    python.on_recovery(recoveries.append)
    delivered = Delivered(python)
    await asyncio.wait_for(python.connect(), WAIT_S)

    connection = await connect(amqp_url, name="warren-test-publisher")
    try:
        feed = Feed(await Publisher.open(connection))
        gone = lost(edge)
        proxy.cut()
        await asyncio.wait_for(gone, WAIT_S)
        during = {e.id for e in await feed.rounds(EVERYWHERE, 3)}
        proxy.restore()
        await arrivals.until(lambda: bool(arrivals.of_type("replay.done")), WAIT_S,
                             "the in-band replay.done")
        after = [e for e in await feed.rounds(EVERYWHERE, 2) if str(e.to) in ALICE_KEYS]
        await arrivals.until(
            lambda: {e.id for e in after} <= {f["id"] for _, f in arrivals.events()}, WAIT_S,
            "live events after replay.done")
        await delivered.until(lambda: {e.id for e in after} <= {e.id for e in delivered.events},
                              "the Python client's live events after replay.done")
    finally:
        await connection.close()

    assert not arrivals.closed.is_set()
    frames = [frame for _at, frame in arrivals.frames]
    (done,) = arrivals.of_type("replay.done")
    data = done["data"]
    assert (data["recovered"], data["reason"], data["oldest"], data["events"]) == (
        False, "history_off", None, 0), data
    assert data["position"] >= data["since"], data
    assert frames[0] == done, "nothing comes before replay.done when nothing is replayed"
    assert [f["id"] for f in frames[1:]] == [e.id for e in after]
    assert not during & {f["id"] for f in frames if is_event(f)}
    assert sample(edge, "warren_edge_inband_recoveries_total", outcome="history_off") == 2

    await delivered.close()
    await python.close()
    assert [(r.in_band, r.recovered, r.reason) for r in recoveries] == [
        (False, None, None), (True, False, "history_off")], recoveries
    assert python.stats.in_band_not_recovered == 1
    assert [e.id for e in delivered.events] == [e.id for e in after]
    assert python.position == after[-1].ts


async def test_a_gap_the_stream_no_longer_holds_is_told_too_old_with_its_oldest_event(
    edge_behind_proxy: Build, amqp_url: str, token_for: Callable[..., str],
) -> None:
    # A stream of a few small segments, and no window: the replay would start at the
    # socket's own position, since the edge fans out nothing for it meanwhile.
    edge, proxy = await edge_behind_proxy(
        WARREN_HISTORY_MAX_BYTES="6000", WARREN_HISTORY_SEGMENT_BYTES="1500",
        WARREN_HISTORY_WINDOW_S="0",
    )
    socket = await Client.connect(edge.port, token_for("alice"))
    welcomed_at = socket.welcome["data"]["position"]
    arrivals = Arrivals(socket)
    connection = await connect(amqp_url, name="warren-test-publisher")
    try:
        feed = Feed(await Publisher.open(connection))

        async def dropped() -> bool:
            await feed.rounds([Address.user("bob")], 10)  # not for this edge's sockets
            return (await stream_head(amqp_url)).offset > 0

        await until(dropped, WAIT_S, "the stream's retention dropped a segment")
        gone = lost(edge)
        proxy.cut()
        await asyncio.wait_for(gone, WAIT_S)
        proxy.restore()
        await arrivals.until(replayed(arrivals), WAIT_S, "the in-band replay.done")
        after = await feed.publish(ALICE)
        await arrivals.until(received(arrivals, {after.id}), WAIT_S, "a live event after it")
    finally:
        await connection.close()

    assert not arrivals.closed.is_set()
    (done,) = arrivals.of_type("replay.done")
    data = done["data"]
    assert (data["recovered"], data["reason"], data["events"]) == (False, "too_old", 0), data
    assert data["since"] == welcomed_at, data
    assert isinstance(data["oldest"], float) and data["oldest"] > welcomed_at, data
    assert [f.get("id") for _at, f in arrivals.frames] == [None, after.id]
    assert sample(edge, "warren_edge_inband_recoveries_total", outcome="too_old") == 1


def late_event(to: Address) -> Envelope:
    """An event routed while no queue of the edge was bound for ``to``, whose write the
    stream held back: the test writes it to the stream alone, after a pass's marker."""
    return Envelope(type="test.event", to=to, sender=SERVICE, data={"late": True})


async def test_an_event_the_stream_writes_after_an_in_band_passs_marker_is_replayed(
    edge_behind_proxy: Build, amqp_url: str, token_for: Callable[..., str],
) -> None:
    edge, proxy = await edge_behind_proxy(WARREN_HISTORY_SETTLE_S="3")
    socket = await Client.connect(edge.port, token_for("alice"))
    arrivals = Arrivals(socket)
    connection = await connect(amqp_url, name="warren-test-publisher")
    try:
        feed = Feed(await Publisher.open(connection))
        before = await feed.publish(ALICE)
        await arrivals.until(received(arrivals, {before.id}), WAIT_S, "an event before the cut")
        stream = await StreamWriter.open(connection)
        settled = sample(edge, "warren_edge_history_settled_passes_total")
        gone = lost(edge)
        proxy.cut()
        await asyncio.wait_for(gone, WAIT_S)
        late = late_event(ALICE)
        proxy.restore()
        await stream.marker(WAIT_S)  # the in-band pass's first marker is in the stream
        await stream.write(late)
        await arrivals.until(replayed(arrivals), WAIT_S, "the in-band replay.done")
        after = await feed.publish(ALICE)
        await arrivals.until(received(arrivals, {after.id}), WAIT_S, "a live event after it")
    finally:
        await connection.close()

    assert not arrivals.closed.is_set()
    frames = [frame for _at, frame in arrivals.frames]
    (done,) = arrivals.of_type("replay.done")
    assert done["data"]["recovered"] is True, done
    index = frames.index(done)
    assert late.id in [f["id"] for f in frames[:index] if is_event(f)], frames
    assert [f["id"] for f in frames[index + 1:]] == [after.id]
    assert sample(edge, "warren_edge_history_settled_passes_total") - settled == 1


async def alice_with_a_live_event(
    edge: EdgeServer, connection: AbstractRobustConnection, token: str
) -> tuple[Client, Envelope]:
    """Alice's first socket, and an event it received live. It keeps her keys bound, so
    that her second one needs no broker answer before its recovery's pass."""
    first = await Client.connect(edge.port, token)
    arrivals = Arrivals(first)
    event = await Feed(await Publisher.open(connection)).publish(ALICE)
    await arrivals.until(received(arrivals, {event.id}), WAIT_S, "an event, live")
    return first, event


async def test_a_recovery_whose_marker_is_confirmed_late_replays_what_the_stream_wrote_late(
    edge_behind_proxy: Build, amqp_url: str, token_for: Callable[..., str],
) -> None:
    edge, proxy = await edge_behind_proxy(WARREN_HISTORY_SETTLE_S="3")
    token = token_for("alice")
    connection = await connect(amqp_url, name="warren-test-publisher")
    try:
        _first, before = await alice_with_a_live_event(edge, connection, token)
        stream = await StreamWriter.open(connection)
        settled = sample(edge, "warren_edge_history_settled_passes_total")
        proxy.slow_down(0.5)  # every answer of the broker to the edge comes half a second late
        second = asyncio.create_task(Client.connect(edge.port, token, query=since(before.ts)))
        await stream.marker(WAIT_S)  # the recovery's marker, its confirm still on its way
        late = late_event(ALICE)
        await stream.write(late)
        recovery = await read_recovery(await second, WAIT_S)
        proxy.slow_down(0)
    finally:
        await connection.close()

    assert recovery.recovered is True, recovery.welcome
    assert late.id in {frame["id"] for frame in recovery.replayed}, recovery.replayed
    assert sample(edge, "warren_edge_history_settled_passes_total") - settled == 1


async def test_a_recovery_whose_pass_outlives_the_broker_connection_is_closed_to_retry(
    edge_behind_proxy: Build, amqp_url: str, token_for: Callable[..., str],
) -> None:
    # The pass settles (its marker is confirmed late), and the edge's connection breaks and
    # comes back meanwhile: the pass ends on the new connection, maybe before the keys
    # are bound there again, so its end tells nothing of what the socket would miss.
    edge, proxy = await edge_behind_proxy(WARREN_HISTORY_SETTLE_S="4")
    token = token_for("alice")
    connection = await connect(amqp_url, name="warren-test-publisher")
    try:
        _first, before = await alice_with_a_live_event(edge, connection, token)
        failed = sample(edge, "warren_edge_recoveries_total", outcome="failed")
        settled = sample(edge, "warren_edge_history_settled_passes_total")
        proxy.slow_down(0.5)
        second = asyncio.create_task(Client.connect(edge.port, token, query=since(before.ts)))

        async def settling() -> bool:
            return sample(edge, "warren_edge_history_settled_passes_total") > settled

        await until(settling, WAIT_S, "the recovery's pass settling")
        proxy.slow_down(0)
        gone = lost(edge)
        proxy.cut()
        await asyncio.wait_for(gone, WAIT_S)
        proxy.restore()
        recovering = await second
        with pytest.raises(ConnectionError, match="1013"):
            await read_recovery(recovering, WAIT_S)
        # Reconnected with its position, it recovers.
        again = await Client.connect(edge.port, token, query=since(before.ts))
        recovery = await read_recovery(again, WAIT_S)
    finally:
        await connection.close()

    assert recovery.recovered is True, recovery.welcome
    assert sample(edge, "warren_edge_recoveries_total", outcome="failed") - failed == 1


async def test_a_broker_restart_while_events_flow_is_replayed_on_the_open_socket(
    edge_on_private: EdgeServer, private_broker: PrivateBroker, private_amqp_url: str,
    token_for: Callable[..., str],
) -> None:
    edge = edge_on_private
    socket = await Client.connect(edge.port, token_for("alice", ("team",)))
    arrivals = Arrivals(socket)

    first = await connect(private_amqp_url, name="warren-test-publisher")
    feed = Feed(await Publisher.open(first))
    doubtful: list[tuple[str, int]] = []

    restarted = asyncio.Event()

    async def until_the_broker_goes() -> None:
        """Publish in rounds until a publish fails (its outcome is unknown), or the broker
        is back: a publish may wait for aio-pika's reconnection and succeed."""
        while not restarted.is_set():
            for to in EVERYWHERE:
                try:
                    await feed.publish(to)
                except BrokerUnavailable:
                    key = str(to)
                    doubtful.append((key, sum(1 for e in feed.published if str(e.to) == key)))
                    return

    flowing = asyncio.create_task(until_the_broker_goes())
    await arrivals.until(lambda: len(arrivals.events()) >= 30, WAIT_S, "events flowing")
    gone = lost(edge)
    await asyncio.to_thread(private_broker.restart)
    restarted.set()
    await asyncio.wait_for(flowing, WAIT_S)
    await asyncio.wait_for(gone, WAIT_S)
    await first.close()

    # The broker is back; the edge may not be yet: what is published now may be routed
    # while it has no queue, or before its keys are bound again.
    second = await connect(private_amqp_url, name="warren-test-publisher-after")
    try:
        feed.publisher = await Publisher.open(second)
        stop = asyncio.Event()
        flowing = asyncio.create_task(feed.flow(EVERYWHERE, stop, lanes=1))
        try:
            await arrivals.until(lambda: bool(arrivals.of_type("replay.done")), WAIT_S,
                                 "the in-band replay.done")
        finally:
            stop.set()
            await flowing
        await feed.rounds(EVERYWHERE, 2)
        wanted = {feed.last(key).id for key in ALICE_KEYS}
        await arrivals.until(lambda: wanted <= {f["id"] for _, f in arrivals.events()},
                             WAIT_S, "the last event of each key")
    finally:
        await second.close()

    assert not arrivals.closed.is_set(), socket.connection.close_code
    frames = [frame for _at, frame in arrivals.frames]
    (done,) = arrivals.of_type("replay.done")
    assert done["data"]["recovered"] is True, done
    assert gap_problems(frames, feed.published, ALICE_KEYS, window=WINDOW_S,
                        doubtful=doubtful) == []
    index = frames.index(done)
    live_before = {f["id"] for f in frames[:index] if is_event(f)}
    print(f"\n{len(feed.published)} events published, {done['data']['events']} replayed "
          f"in band ({len(frames[:index]) - len(live_before)} repeats), "
          f"{sum(1 for f in frames[index:] if is_event(f))} after replay.done")
