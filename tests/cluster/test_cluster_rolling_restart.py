"""A rolling restart of the three-node cluster, one node at a time, under steady load
(issue 18).

``warren up`` runs two replicas of every service against the three-node cluster through
HAProxy. Throughout: events to two users (one on each edge) and the group they share;
exports and runs submitted through both edges, over sockets and the HTTP API; and a
user's questions to the Cat, through the relays. Each
node in turn stops in order and starts again; the next one stops only when it is back,
its quorum and stream replicas online, and every replica of every service ready. For
each node, while it is down:

- every edge, runner and worker replica is ready (those whose connection was on it moved
  through HAProxy), and live delivery resumes on both sockets.

Counted exactly at the end:

- the sockets were never closed;
- every accepted export and run was done exactly once, every ask ended once (its reply,
  or ``interrupted`` if a relay held it when its connection broke) in the order asked,
  nothing was dead-lettered;
- each socket got every event published to it: those routed while its edge was
  switching nodes were replayed in band once the edge was connected again
  (docs/protocol.md 17.5), in order, none lost;
- a reconnect with the position each client had before the first stop gets them all
  again from the history stream (17.3), which the three restarts kept whole.

The time each step took is printed, per node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.messaging import Address
from shared.messaging.names import HISTORY_STREAM, RUNNER_RUNS_QUEUE, Command, work_queue_name
from tests.chaos.ledger import Ledger
from tests.chaos.watch import Watcher, until
from tests.cluster.load import (
    WORK_SETTINGS,
    EventFlow,
    WorkLoad,
    all_arrived,
    audit_work,
    in_band,
    outages,
    recover_missed,
)
from tests.support.cluster import RabbitCluster
from tests.support.history import is_event
from tests.support.system import System

PUBLISH_EVERY_S = 0.05
SUBMIT_EVERY_S = 2.5
EXPORT_ROWS = 20
RUN_STEPS = 4  # about 1 s a run
READY_S = 60.0
WAIT_S = 30.0
REPLICATED = (work_queue_name(Command.EXCEL_CREATE), work_queue_name(Command.RUN_START),
              RUNNER_RUNS_QUEUE, HISTORY_STREAM)


@dataclass(frozen=True)
class Step:
    """One node's restart, in seconds from the start of its stop."""

    node: str
    stopped: float
    ready: float  # every edge, runner and worker ready, the node still down
    resumed: float  # both sockets receiving events published after the stop
    back: float  # started, and in HAProxy again
    synced: float  # its replicas online, every replica of every service ready
    outages: dict[str, float]  # replica -> the broker outage it logged

    def __str__(self) -> str:
        return (f"{self.node}: stopped {self.stopped:.2f} s, services ready {self.ready:.2f} s, "
                f"live delivery resumed {self.resumed:.2f} s, back {self.back:.2f} s, replicas "
                f"online {self.synced:.2f} s after its stop began; outages logged "
                f"{self.outages}")


@pytest.mark.timeout(600)
async def test_a_rolling_restart_under_load_loses_nothing(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, postgres_url: str, tmp_path: Path,
    warren_up: Callable[..., Awaitable[System]], token_for: Callable[..., str],
) -> None:
    cluster, vhost = rabbit_cluster, cluster_vhost
    began = time.monotonic()
    system = await warren_up(**WORK_SETTINGS)
    ledger = Ledger(postgres_url, tmp_path / "exports")
    nodes = tuple(sorted(n.node for n in cluster.nodes))
    for queue in REPLICATED:
        replicas = await asyncio.to_thread(cluster.replicas, vhost, queue)
        assert replicas.members == replicas.online == nodes, replicas

    alice_token, bob_token = token_for("alice"), token_for("bob")
    team = Address.group("team")
    listeners = {"edge-1": ("carol", token_for("carol", ("team",))),
                 "edge-2": ("dave", token_for("dave", ("team",)))}
    alice = await Watcher.connect(system.port("edge-1"), alice_token)
    bob = await Watcher.connect(system.port("edge-2"), bob_token)
    sockets = {edge: await Watcher.connect(system.port(edge), token)
               for edge, (_user, token) in listeners.items()}
    watchers = (alice, bob, *sockets.values())
    flow = await EventFlow.start(
        cluster, vhost, cluster.nodes[-1].node,
        [*(Address.user(user) for user, _token in listeners.values()), team], PUBLISH_EVERY_S)
    load = WorkLoad(system, alice, bob, "edge-2", bob_token, EXPORT_ROWS, RUN_STEPS, chat=True)
    steps: list[Step] = []
    try:
        load.start(SUBMIT_EVERY_S)
        await until(lambda: all(len(_events(w)) >= 20 for w in sockets.values())
                    and load.accepted() >= 4, WAIT_S, "events flowing and work accepted")
        before = {edge: list(watcher.frames) for edge, watcher in sockets.items()}
        restart_began = time.monotonic()
        for node in cluster.nodes:
            steps.append(await _restart(cluster, vhost, system, flow, sockets, node.node))
        restarted = time.monotonic()
        # The load goes on for a while on the whole cluster.
        accepted = load.accepted()
        await until(lambda: load.accepted() >= accepted + 4, WAIT_S, "work after the restart")
        await load.stop()
        await flow.stop()

        assert not any(w.closed for w in watchers), [w.close_code for w in watchers]
        problems = await audit_work(cluster, vhost, system, ledger, load, alice_token,
                                    bob_token, alice.welcome["data"]["position"])
        assert problems == {key: type(value)() for key, value in problems.items()}, problems
        # Each socket got every event, those routed while its edge was switching nodes
        # replayed in band; a reconnect with the position from before the first stop
        # gets them all again from the stream, which every node's restart kept whole.
        replays, recovered = {}, {}
        for edge, (user, token) in listeners.items():
            keys = {str(Address.user(user)), str(team)}
            await all_arrived(sockets[edge], flow, keys)
            replays[edge] = in_band(sockets[edge], flow, keys)
            assert replays[edge].problems == [], (edge, replays[edge].problems)
            assert replays[edge].replays, f"{edge} switched nodes, and replayed nothing"
            recovered[edge] = await recover_missed(system.port(edge), token, before[edge],
                                                   flow, keys)
            assert recovered[edge].problems == [], (edge, recovered[edge].problems)
        print(
            "\nrolling restart, one node at a time:\n  " + "\n  ".join(map(str, steps))
            + f"\nthe whole restart took {restarted - restart_began:.2f} s "
            f"(the test {time.monotonic() - began:.2f} s); {len(load.exports)} exports and "
            f"{len(load.runs)} runs and {len(load.asks)} chat asks accepted, each done once, "
            f"{len(load.refused)} refused "
            f"({load.refusals()}); "
            f"{len(flow.published)} events published; replayed in band (replays, "
            f"events, repeats dropped by id): "
            f"{ {e: (len(r.replays), r.replayed, r.repeats) for e, r in replays.items()} }; "
            f"replayed to a reconnect with the position before the first stop: "
            f"{ {e: r.replayed for e, r in recovered.items()} }"
        )
    finally:
        await load.close()
        await flow.close()
        for watcher in watchers:
            await watcher.close()
        ledger.close()


async def _restart(
    cluster: RabbitCluster, vhost: str, system: System, flow: EventFlow,
    sockets: dict[str, Watcher], node: str,
) -> Step:
    """Stop ``node``, wait for the services and live delivery, start it, wait for its
    replicas and every service."""
    await flow.move_off(node)
    mark = system.up.mark()
    began = time.monotonic()
    await asyncio.to_thread(cluster.stop, node)
    stopped = time.monotonic()
    await system.wait_ready(READY_S, services=("edge", "runner", "excel"))
    ready = time.monotonic()
    for watcher in sockets.values():
        await watcher.wait_for(
            lambda f: flow.published_at.get(str(f.get("id")), 0.0) >= stopped, WAIT_S)
    resumed = time.monotonic()
    await asyncio.to_thread(cluster.start_node, node)
    back = time.monotonic()
    await asyncio.to_thread(cluster.await_replicas_online, vhost)
    await system.wait_ready(READY_S)
    synced = time.monotonic()
    assert await asyncio.to_thread(cluster.running_nodes) == {n.node for n in cluster.nodes}
    return Step(node, stopped - began, ready - began, resumed - began, back - began,
                synced - began, outages(system, mark))


def _events(watcher: Watcher) -> list[dict[str, object]]:
    return [frame for frame in watcher.frames if is_event(frame)]
