"""The node that leads the work queues stops, with exports building and runs queued
(issue 18).

``warren up`` runs two replicas of every service against the three-node cluster through
HAProxy. Six exports are accepted (two building, four waiting) and five runs (two
running, three waiting for a free slot); then the node that leads
``warren.cmd.excel.create`` stops. The quorum queues elect leaders on the other nodes,
the services whose connection was on that node reconnect through HAProxy, and, while
the node is still down:

- every replica of every service is ready again (consuming);
- every accepted export completes exactly once (a ``done`` row, one file, one
  notification, one build);
- every run ends exactly once; those that were waiting complete;
- nothing is dead-lettered.

The node is started again at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shared.messaging.names import RUNNER_RUNS_QUEUE, Command, work_queue_name
from tests.chaos.ledger import Ledger
from tests.chaos.watch import Watcher, api, is_event, until
from tests.support.cluster import RabbitCluster
from tests.support.system import System

EXPORTS_QUEUE = work_queue_name(Command.EXCEL_CREATE)
EXPORT_ROWS = 600  # about 6 s of building each (WARREN_EXCEL_TEST_ROW_DELAY_S)
RUNS = 5
RUN_STEPS = 24  # about 6 s a run: with two slots, the last ones wait over 10 s
SETTLE_S = 120.0
READY_S = 30.0
# One run at a time per runner replica, so that runs wait in the runs queue.
RUN_SETTINGS = {"WARREN_RUNNER_MAX_CONCURRENT": "1", "WARREN_RUNNER_MAX_PER_USER": str(RUNS)}


@pytest.mark.timeout(600)
async def test_the_node_leading_the_work_queues_stops_with_work_in_flight(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, postgres_url: str, tmp_path: Path,
    warren_up: Callable[..., Awaitable[System]], token_for: Callable[..., str],
) -> None:
    cluster, vhost = rabbit_cluster, cluster_vhost
    system = await warren_up(**RUN_SETTINGS)
    ledger = Ledger(postgres_url, tmp_path / "exports")
    try:
        await _stop_the_leader(cluster, vhost, system, ledger, token_for)
    finally:
        ledger.close()


async def _stop_the_leader(
    cluster: RabbitCluster, vhost: str, system: System, ledger: Ledger,
    token_for: Callable[..., str],
) -> None:
    alice_token, bob_token = token_for("alice"), token_for("bob")
    alice = await Watcher.connect(system.port("edge-1"), alice_token)
    bob = await Watcher.connect(system.port("edge-2"), bob_token)

    runs = []
    for _ in range(RUNS):
        ack = await alice.request({"type": "run.start", "data": {
            "job": "countdown", "args": {"start": RUN_STEPS, "interval_s": 0.25}}})
        assert ack["type"] == "ack", ack
        runs.append(ack["data"]["id"])
    tasks = []
    for _ in range(4):
        ack = await alice.request({"type": "excel.create", "data": {
            "report": "sample", "params": {"rows": EXPORT_ROWS}}})
        assert ack["type"] == "ack", ack
        tasks.append(ack["data"]["id"])
    for _ in range(2):
        status, body = await api(system.port("edge-2"), bob_token, "/api/exports",
                                 method="POST",
                                 body={"report": "sample", "params": {"rows": EXPORT_ROWS}})
        assert status == 202, body
        tasks.append(body["task_id"])
    await alice.wait_for(is_event("excel.progress", task_id=tasks[0]))
    await alice.wait_for(is_event("run.output", run_id=runs[0]))
    waiting = [run for run in runs if not alice.events("run.started", run_id=run)]
    assert waiting, "runs wait for a free slot"
    # Work in flight when the node stops: exports still waiting in their queue (two
    # workers build one each, about 6 s apiece), besides those being built.
    queued = [task for task, status in ledger.export_status().items() if status == "queued"]
    assert queued, ledger.export_status()

    exports = await asyncio.to_thread(cluster.replicas, vhost, EXPORTS_QUEUE)
    runs_queue = await asyncio.to_thread(cluster.replicas, vhost, RUNNER_RUNS_QUEUE)
    assert len(exports.members) == len(runs_queue.members) == len(cluster.nodes)
    leader = exports.leader
    stop_began = time.monotonic()
    await asyncio.to_thread(cluster.stop, leader)
    stopped = time.monotonic()

    # While the node is down: every replica of the work services consuming again (those
    # whose connection was on it through HAProxy on another node), new leaders, and all
    # the work done, each piece once. Not the relays: their chat claims and session
    # queues are classic, and a relay whose restore declares one that lived on the
    # stopped node waits for that node (docs/reliability.md 2.6, issue 18).
    await system.wait_ready(READY_S, services=("edge", "runner", "excel"))
    all_ready = time.monotonic()
    moved = await asyncio.to_thread(cluster.replicas, vhost, EXPORTS_QUEUE)
    assert moved.leader != leader, moved
    await until(lambda: ledger.all_final(tasks), SETTLE_S, "every export final")
    exports_done = time.monotonic()
    await until(lambda: all(alice.events("run.finished", run_id=run) for run in runs),
                SETTLE_S, "every run ended")
    runs_done = time.monotonic()

    audit = ledger.audit_exports(tasks, system.up.output().splitlines())
    assert (audit.lost, audit.duplicated) == ([], []), audit.report()
    heard = {task: len(alice.events("excel.done", task_id=task))
             + len(bob.events("excel.done", task_id=task)) for task in tasks}
    finished = {run: alice.events("run.finished", run_id=run) for run in runs}
    assert all(len(events) == 1 for events in finished.values()), finished
    for run in waiting:
        assert finished[run][0]["data"]["status"] == "completed", finished[run]
    for run, events in finished.items():
        data = events[0]["data"]
        assert data["status"] == "completed" or (data["status"] == "failed" and data["reason"])
        assert len(alice.events("run.started", run_id=run)) == 1, run
    while_down = await asyncio.to_thread(cluster.queue_depths, vhost)
    unavailable = sorted(queue for queue, n in while_down.items() if n is None)

    restart_began = time.monotonic()
    await asyncio.to_thread(cluster.start_node, leader)
    # The dead letters can be counted once their node (if it is the stopped one) is back.
    depths = await asyncio.to_thread(cluster.queue_depths, vhost)
    dead = {q: n for q, n in depths.items() if n != 0 and q.endswith(".dead")}
    assert dead == {}, dead
    print(
        f"\nleader {leader} stopped in {stopped - stop_began:.2f} s; every replica ready "
        f"again {all_ready - stop_began:.2f} s after the stop began; new leader "
        f"{moved.leader}; {len(tasks)} exports done {exports_done - stop_began:.2f} s and "
        f"{len(runs)} runs ended {runs_done - stop_began:.2f} s after the stop began "
        f"(runs: {[f[0]['data']['status'] for f in finished.values()]}; excel.done heard "
        f"{sorted(heard.values())}); node back in {time.monotonic() - restart_began:.2f} s; "
        f"unavailable while it was down: {unavailable}"
    )
    for watcher in (alice, bob):
        await watcher.close()
