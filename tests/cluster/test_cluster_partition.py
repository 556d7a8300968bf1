"""One node of the three is cut off from the other two, under load (issue 18).

``warren up`` runs two replicas of every service against the three-node cluster through
HAProxy. Events flow to a client on the edge whose connection is on the node about to
be cut off, and that node is made the leader of the work queues and the runs queue.
Exports and runs are submitted through both edges, some waiting in their queues. Then
the node loses its links to its two peers (:meth:`RabbitCluster.partition`: the Erlang
distribution links that a network partition cuts), while its clients' links stay. With
``pause_minority``:

- the node, alone, pauses: RabbitMQ stops on it (its VM still answers the CLI), the
  majority no longer counts it running, HAProxy marks it down;
- the services whose connection was on it move through HAProxy to the majority and
  are ready again; the sockets stay open, and live delivery resumes;
- the majority elects new leaders, and the work accepted before the cut and during the
  partition is done while it lasts (the load pauses meanwhile, so that it is all of it).

Then the partition ends (:meth:`RabbitCluster.rejoin`): the node starts RabbitMQ again by
itself, its replicas come back online, no partition is left recorded, and work is
accepted again. Counted exactly at the end: every accepted export and run done once,
nothing dead-lettered; the client's socket got every event published to it, those
routed while its edge moved replayed in band (docs/protocol.md 17.5), and a reconnect
with the position it had before the cut gets them all from the history stream (17.3).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shared.messaging import Address
from shared.messaging.names import HISTORY_STREAM, RUNNER_RUNS_QUEUE, Command, work_queue_name
from tests.chaos.ledger import Ledger
from tests.chaos.watch import Frame, Watcher, until
from tests.cluster.load import (
    WORK_SETTINGS,
    EventFlow,
    WorkLoad,
    all_arrived,
    audit_work,
    in_band,
    outages,
    recover_missed,
    work_done,
)
from tests.support.cluster import RabbitCluster
from tests.support.history import is_event
from tests.support.system import System

EDGE = "edge-1"
PUBLISH_EVERY_S = 0.05
SUBMIT_EVERY_S = 2.0
EXPORT_ROWS = 20
RUN_STEPS = 4  # about 1 s a run
PAUSE_S = 30.0
READY_S = 60.0
SETTLE_S = 120.0
WAIT_S = 30.0
LED = (work_queue_name(Command.EXCEL_CREATE), work_queue_name(Command.RUN_START),
       RUNNER_RUNS_QUEUE)
REPLICATED = (*LED, HISTORY_STREAM)


@pytest.mark.timeout(600)
async def test_a_node_cut_off_from_the_other_two_pauses_and_nothing_is_lost(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, postgres_url: str, tmp_path: Path,
    warren_up: Callable[..., Awaitable[System]], token_for: Callable[..., str],
) -> None:
    cluster, vhost = rabbit_cluster, cluster_vhost
    system = await warren_up(**WORK_SETTINGS)
    ledger = Ledger(postgres_url, tmp_path / "exports")
    nodes = tuple(sorted(n.node for n in cluster.nodes))
    for queue in REPLICATED:
        replicas = await asyncio.to_thread(cluster.replicas, vhost, queue)
        assert replicas.members == replicas.online == nodes, replicas

    alice_token, bob_token = token_for("alice"), token_for("bob")
    carol_token = token_for("carol", ("team",))
    carol_keys = {str(Address.user("carol")), str(Address.group("team"))}
    alice = await Watcher.connect(system.port("edge-1"), alice_token)
    bob = await Watcher.connect(system.port("edge-2"), bob_token)
    carol = await Watcher.connect(system.port(EDGE), carol_token)
    watchers = (alice, bob, carol)
    # The node cut off is the one carol's edge is connected to.
    edge_instance = carol.welcome["data"]["edge"]
    node = await asyncio.to_thread(cluster.node_of, vhost, f"warren-{edge_instance}")
    majority = next(n.node for n in cluster.nodes if n.node != node)
    flow = await EventFlow.start(cluster, vhost, majority,
                                 [Address.user("carol"), Address.group("team")], PUBLISH_EVERY_S)
    load = WorkLoad(system, alice, bob, "edge-2", bob_token, EXPORT_ROWS, RUN_STEPS)
    try:
        load.start(SUBMIT_EVERY_S)
        await until(lambda: len(_events(carol)) >= 20, WAIT_S, "events flowing")
        # Exports waiting in their queue at the cut, besides those being built.
        await load.burst(4)
        assert "queued" in ledger.export_status().values(), ledger.export_status()
        # It leads the work queues and the runs queue: the majority must elect others.
        for queue in LED:
            await asyncio.to_thread(cluster.lead, vhost, queue, node)
        led = [q for q in REPLICATED
               if (await asyncio.to_thread(cluster.replicas, vhost, q)).leader == node]
        services_on_node = sorted(
            name for name, on in (await asyncio.to_thread(cluster.connections, vhost)).items()
            if on == node)
        before = list(carol.frames)
        accepted_before = load.accepted()
        mark = system.up.mark()

        cut_began = time.monotonic()
        await asyncio.to_thread(cluster.partition, node)
        cut = time.monotonic()
        # The node alone pauses: its AMQP listener closes with RabbitMQ, HAProxy marks it
        # down, the majority goes on without it.
        await until(lambda: asyncio.to_thread(_refuses_amqp, cluster, node), PAUSE_S,
                    f"{node} paused")
        paused = time.monotonic()
        # Live delivery resumes: an event published after the pause reaches carol.
        resumed_at: list[float] = []
        resume = asyncio.create_task(carol.wait_for(
            lambda f: flow.published_at.get(str(f.get("id")), 0.0) >= paused, READY_S))
        resume.add_done_callback(lambda _task: resumed_at.append(time.monotonic()))
        assert not await asyncio.to_thread(cluster.rabbit_running, node)
        assert await asyncio.to_thread(cluster.running_nodes) == set(nodes) - {node}
        await asyncio.to_thread(cluster.await_proxy, node, "DOWN")
        # Its services are on the majority, ready again; the sockets stayed open.
        await system.wait_ready(READY_S, services=("edge", "runner", "excel"))
        all_ready = time.monotonic()
        await resume
        resumed = resumed_at[0]
        moved = outages(system, mark)
        connections = await asyncio.to_thread(cluster.connections, vhost)
        assert node not in connections.values(), connections
        # The work accepted before the cut and during the partition is done while it lasts.
        await until(lambda: load.accepted() >= accepted_before + 4, WAIT_S,
                    "work accepted during the partition")
        await load.stop()
        accepted_during = load.accepted()
        await until(lambda: work_done(ledger, load.exports, load.runs), SETTLE_S,
                    "the work accepted so far done")
        done_during = time.monotonic()
        leaders = {q: (await asyncio.to_thread(cluster.replicas, vhost, q)).leader for q in led}
        assert set(LED) <= set(led) and node not in leaders.values(), (led, leaders)
        assert not await asyncio.to_thread(cluster.rabbit_running, node), "the node woke alone"

        rejoin_began = time.monotonic()
        await asyncio.to_thread(cluster.rejoin, node)
        back = time.monotonic()
        await asyncio.to_thread(cluster.await_replicas_online, vhost)
        synced = time.monotonic()
        assert await asyncio.to_thread(cluster.running_nodes) == set(nodes)
        assert await asyncio.to_thread(cluster.partitions) == {}
        # The whole cluster takes work again.
        load.start(SUBMIT_EVERY_S)
        await until(lambda: load.accepted() >= accepted_during + 4, WAIT_S,
                    "work accepted after the partition")
        await load.stop()
        await flow.stop()
        await system.wait_ready(READY_S)

        assert not any(w.closed for w in watchers), [w.close_code for w in watchers]
        problems = await audit_work(cluster, vhost, system, ledger, load, alice_token,
                                    bob_token, alice.welcome["data"]["position"])
        assert problems == {key: type(value)() for key, value in problems.items()}, problems
        # Carol's socket got every event, those routed while her edge moved replayed in
        # band; a reconnect with her position from before the cut gets them again.
        await all_arrived(carol, flow, carol_keys)
        replays = in_band(carol, flow, carol_keys)
        assert replays.problems == [], replays.problems
        assert replays.replays, "carol's edge moved to the majority, and replayed nothing"
        recovered = await recover_missed(system.port(EDGE), carol_token, before, flow,
                                         carol_keys)
        assert recovered.problems == [], recovered.problems
        print(
            f"\n{node} cut off (leading {led or 'no queue'}; connections on it: "
            f"{services_on_node}); it paused {paused - cut:.2f} s after the cut "
            f"(rabbitmqctl eval took {cut - cut_began:.2f} s); outages logged {moved}; "
            f"live delivery resumed {resumed - cut:.2f} s after the cut, every edge, runner "
            f"and worker ready {all_ready - cut:.2f} s (found by polling); new leaders "
            f"{leaders}; "
            f"{accepted_during - accepted_before} commands accepted during the partition, "
            f"all work done {done_during - cut:.2f} s after the cut; node back "
            f"{back - rejoin_began:.2f} s after the rejoin began, replicas online "
            f"{synced - rejoin_began:.2f} s after it; {len(load.exports)} exports and "
            f"{len(load.runs)} runs accepted, each done once, {len(load.refused)} refused "
            f"({load.refusals()}); {len(flow.published)} events "
            f"published; carol's socket got {len(replays.replays)} in-band replays of "
            f"{replays.replayed} events in all ({replays.repeats} repeats dropped by id), and "
            f"a reconnect with her position before the cut {recovered.replayed} events"
        )
    finally:
        await load.close()
        await flow.close()
        for watcher in watchers:
            await watcher.close()
        ledger.close()


def _events(watcher: Watcher) -> list[Frame]:
    return [frame for frame in watcher.frames if is_event(frame)]


def _refuses_amqp(cluster: RabbitCluster, node: str) -> bool:
    return not cluster.accepts_amqp(node)
