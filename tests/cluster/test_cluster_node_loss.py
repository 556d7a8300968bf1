"""A RabbitMQ node stops mid-traffic, the one an edge's connection is on (issue 18).

``warren up`` runs two replicas of every service against the three-node cluster through
HAProxy, the one address it is given. Events flow to a client's user and group on that
edge; the edge's node stops in order. Then:

- the client's socket stays open;
- the edge reconnects through HAProxy to a live node, declares its queue there again and
  binds the client's keys again, and delivery resumes: the time from the stop to the
  first event delivered after it is printed;
- the events published while the edge was away reach the open socket, replayed in band
  by the edge from the history stream before the live events it held back meanwhile
  (docs/protocol.md 17.5): every event once after de-duplication, in order per key. The
  stream has a replica on every node, so the stop loses none of it;
- a client that reconnects with the position it had before the stop gets them too
  (17.3).

Before the stop, the events' dead-letter queue (a classic queue, on the node of the
first process that declared it) is placed on that node too, so that the test also
covers losing a node that holds one of Warren's classic queues. The test's publisher is
connected straight to another node, so that its own failover plays no part. The node is
started again at the end.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from shared.config import HistorySettings
from shared.messaging import Address
from shared.messaging.broker import Publisher, connect, declare_exchanges
from shared.messaging.names import (
    EDGE_EXCHANGE,
    EVENTS_DEAD_LETTER_QUEUE,
    HISTORY_STREAM,
    edge_queue_name,
)
from tests.support.arrivals import Arrivals
from tests.support.client import Client
from tests.support.cluster import RabbitCluster
from tests.support.history import Feed, delivery_problems, is_event, read_recovery, since
from tests.support.inband import gap_problems
from tests.support.system import System

EDGE = "edge-1"
PUBLISH_EVERY_S = 0.02
RESUME_S = 60.0
WAIT_S = 30.0
WINDOW_S = HistorySettings().window_s


@dataclass
class Flow:
    """Events published one at a time, alternately to the client's user and group."""

    feed: Feed
    addresses: list[Address]
    published_at: dict[str, float] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            for to in self.addresses:
                at = time.monotonic()
                envelope = await self.feed.publish(to)
                self.published_at[envelope.id] = at
            await asyncio.sleep(PUBLISH_EVERY_S)  # the pace of the traffic, not a wait


@pytest.mark.timeout(600)
async def test_the_node_an_edge_is_on_stops_mid_traffic(
    rabbit_cluster: RabbitCluster, cluster_vhost: str,
    warren_up: Callable[..., Awaitable[System]], token_for: Callable[..., str],
) -> None:
    cluster, vhost = rabbit_cluster, cluster_vhost
    system = await warren_up()
    # The stream has a replica on every node (declared by the edges at start).
    stream = await asyncio.to_thread(cluster.replicas, vhost, HISTORY_STREAM)
    assert len(stream.members) == len(cluster.nodes) == len(stream.online), stream

    alice = Address.user("alice")
    team = Address.group("team")
    keys = {str(alice), str(team)}
    client = await Client.connect(system.port(EDGE), token_for("alice", ("team",)))
    instance = client.welcome["data"]["edge"]
    arrivals = Arrivals(client)
    node = await asyncio.to_thread(cluster.node_of, vhost, f"warren-{instance}")

    await _place_events_dead_letters(cluster, vhost, node)

    other = next(n for n in cluster.nodes if n.node != node)
    connection = await connect(other.vhost_url(vhost), name="warren-test-publisher")
    flow = Flow(Feed(await Publisher.open(connection)), [alice, team])
    flowing = asyncio.create_task(flow.run())
    try:
        await arrivals.until(lambda: len(arrivals.events()) >= 20, WAIT_S, "events flowing")

        mark = system.up.mark()
        stop_began = time.monotonic()
        before = [frame for _at, frame in arrivals.events()]
        await asyncio.to_thread(cluster.stop, node)
        stopped = time.monotonic()

        # Live delivery resumes: an event published after the node was gone arrives.
        def resumed() -> float | None:
            return next((at for at, frame in arrivals.events()
                         if flow.published_at.get(frame["id"], 0.0) >= stopped), None)

        await arrivals.until(lambda: resumed() is not None, RESUME_S, "live delivery resumed")
        resumed_at = resumed()
        assert resumed_at is not None
        outage = await asyncio.to_thread(
            system.up.wait_for,
            re.compile(rf"{EDGE}.*broker reconnected after ([0-9.]+) s"), WAIT_S, mark,
        )
        # The edge is on a live node now, its queue declared there and bound again.
        now_on = await asyncio.to_thread(cluster.node_of, vhost, f"warren-{instance}")
        assert now_on != node
        bound = await asyncio.to_thread(
            cluster.bindings, vhost, edge_queue_name(instance), EDGE_EXCHANGE
        )
        assert {alice.routing_key, team.routing_key} <= bound, bound
        # The edge replays to the open socket, in band, what was routed during the switch
        # (docs/protocol.md 17.5), then the live events it held back meanwhile.
        await arrivals.until(lambda: bool(arrivals.of_type("replay.done")), WAIT_S,
                             "the in-band replay.done")
        await arrivals.until(
            lambda: sum(1 for at, _ in arrivals.events() if at > resumed_at) >= 20,
            WAIT_S, "live events after the resumption",
        )
        flow.stop.set()
        await flowing
        last = {key: flow.feed.last(key).id for key in keys}
        await arrivals.until(lambda: set(last.values()) <= {f["id"] for _, f in arrivals.events()},
                             WAIT_S, "the last event of each key on the open socket")
        assert not arrivals.closed.is_set(), client.connection.close_code
        frames = [frame for _at, frame in arrivals.frames]
        (done,) = arrivals.of_type("replay.done")
        assert done["data"]["recovered"] is True, done
        problems = gap_problems(frames, flow.feed.published, keys, window=WINDOW_S)
        assert problems == [], problems
        # The events routed during the switch came with the replay, before replay.done: it
        # begins with the first repeat (from the window before what the edge had fanned
        # out), and what it brings that the socket never had is what it missed.
        ids = [f["id"] for f in frames[:frames.index(done)] if is_event(f)]
        had: set[str] = set()
        start = len(ids)
        for n, event_id in enumerate(ids):
            if event_id in had:
                start = n
                break
            had.add(event_id)
        switch = set(ids[start:]) - had
        assert switch, "no event was routed during the switch"
        client.close()

        # A client that reconnects with the position it had before the stop gets those
        # events from the stream as well, then live events again.
        position = before[-1]["ts"]
        again = await Client.connect(system.port(EDGE), token_for("alice", ("team",)),
                                     query=since(position))
        recovery = await read_recovery(again)
        assert recovery.recovered is True, recovery.welcome
        replayed = {frame["id"] for frame in recovery.replayed}
        assert switch <= replayed, f"{len(switch - replayed)} of {len(switch)} not replayed"
        flow.stop.clear()
        flowing = asyncio.create_task(flow.run())
        after = Arrivals(again)
        await after.until(lambda: len(after.events()) >= 10, WAIT_S, "live events after recovery")
        flow.stop.set()
        await flowing
        last = {key: flow.feed.last(key).id for key in keys}
        await after.until(lambda: {f["id"] for _, f in after.events()} >= set(last.values()),
                          WAIT_S, "the last event of each key")
        session = [recovery.welcome, *recovery.replayed,
                   *[frame for _at, frame in after.frames]]
        problems = delivery_problems([before, session], flow.feed.published, keys,
                                     window=WINDOW_S)
        assert problems == [], problems
        again.close()

        restart_began = time.monotonic()
        await asyncio.to_thread(cluster.start_node, node)
        gap, gap_end = _longest_gap([at for at, _frame in arrivals.events()], stop_began)
        print(
            f"\nnode {node} stopped in {stopped - stop_began:.2f} s; live delivery to the "
            f"socket stopped for {gap:.2f} s at most, resuming {gap_end - stop_began:.2f} s "
            f"after the stop began; the edge logged its broker outage as {outage.group(1)} s; "
            f"{len(flow.feed.published)} events published, {len(switch)} routed during the "
            f"switch and replayed in band on the open socket ({done['data']['events']} "
            f"replayed with the window's repeats), and again to a reconnect with the position "
            f"before the stop ({len(replayed)} replayed); node back in "
            f"{time.monotonic() - restart_began:.2f} s"
        )
    finally:
        flow.stop.set()
        await asyncio.gather(flowing, return_exceptions=True)
        await connection.close()


async def _place_events_dead_letters(cluster: RabbitCluster, vhost: str, node: str) -> None:
    """Declare ``warren.events.dead`` again from a connection to ``node``: it lives there."""
    await asyncio.to_thread(cluster.ctl, "delete_queue", "-p", vhost, EVENTS_DEAD_LETTER_QUEUE)
    connection = await connect(cluster.node(node).vhost_url(vhost), name="warren-test-placer")
    async with connection:
        await declare_exchanges(await connection.channel())
    assert await asyncio.to_thread(cluster.home, vhost, EVENTS_DEAD_LETTER_QUEUE) == node


def _longest_gap(arrivals: list[float], since: float) -> tuple[float, float]:
    """The longest time without an event from the last arrival before ``since`` on, and
    when it ended."""
    times = [t for t in arrivals if t >= since]
    start = max((t for t in arrivals if t < since), default=since)
    longest, ended = 0.0, since
    for previous, current in zip([start, *times], times):
        if current - previous > longest:
            longest, ended = current - previous, current
    return longest, ended
