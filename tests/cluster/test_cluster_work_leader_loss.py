"""The node that leads the work queues stops, with exports building, runs queued and
chat asks being answered (issue 18).

``warren up`` runs two replicas of every service against the three-node cluster through
HAProxy. Six exports are accepted (two building, four waiting) and five runs (two
running, three waiting for a free slot); two users each ask the Cat a series of
questions, answered one at a time, slowly, with the users' chat session queues led by
the node about to stop. Then the node that leads ``warren.cmd.excel.create`` stops. The
quorum queues elect leaders on the other nodes, the services whose connection was on
that node reconnect through HAProxy, and, while the node is still down:

- every replica of every service is ready again (consuming), the relays included;
- every accepted export completes exactly once (a ``done`` row, one file, one
  notification, one build);
- every run ends exactly once; those that were waiting complete;
- every ask ends exactly once, with its reply or, for one a relay held when its
  connection broke, ``interrupted``; each user's asks reach the Cat in the order they
  were asked, none twice, and their outcomes were published in that order;
- nothing is dead-lettered.

The chat outcomes are read from the history stream, by a socket that recovers from the
position its user had before asking (docs/protocol.md 17): an edge whose connection
was on the stopped node does not deliver live what is published while it moves.

The node is started again at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from aio_pika.abc import AbstractRobustChannel

from shared.messaging.broker import connect, declare_session_queue
from shared.messaging.names import (
    RUNNER_RUNS_QUEUE,
    Command,
    chat_session_queue_name,
    work_queue_name,
)
from tests.chaos.ledger import Ledger
from tests.chaos.watch import Frame, Watcher, api, is_event, until
from tests.support.cat_v1 import reply_for
from tests.support.client import Client
from tests.support.cluster import RabbitCluster
from tests.support.history import position, read_recovery, since
from tests.support.system import System

EXPORTS_QUEUE = work_queue_name(Command.EXCEL_CREATE)
EXPORT_ROWS = 600  # about 6 s of building each (WARREN_EXCEL_TEST_ROW_DELAY_S)
RUNS = 5
RUN_STEPS = 24  # about 6 s a run: with two slots, the last ones wait over 10 s
SETTLE_S = 120.0
READY_S = 30.0
# One run at a time per runner replica, so that runs wait in the runs queue.
RUN_SETTINGS = {"WARREN_RUNNER_MAX_CONCURRENT": "1", "WARREN_RUNNER_MAX_PER_USER": str(RUNS)}
ASKS = 10  # per user, asked at once and answered one at a time
CAT_PACE_S = 0.2  # between the frames of an answer: about 1 s an answer, 10 s a user


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

    # Chat asks in flight too, in session queues that the stopping node leads (a new
    # quorum queue's leader is on the node of the connection that declares it).
    chats = {"alice": alice, "bob": bob}
    await _declare_sessions_on(cluster, vhost, leader, tuple(chats))
    sessions = {user: await asyncio.to_thread(cluster.replicas, vhost,
                                              chat_session_queue_name(user))
                for user in chats}
    assert {s.leader for s in sessions.values()} == {leader}, sessions
    assert all(s.members == exports.members for s in sessions.values()), sessions
    relays_there = sorted(name for name, node in (
        await asyncio.to_thread(cluster.connections, vhost)).items()
        if node == leader and name.startswith("warren-relay-"))
    system.cat.pace_s = CAT_PACE_S
    tokens = {"alice": alice_token, "bob": bob_token}
    edges = {"alice": "edge-1", "bob": "edge-2"}
    before_asking = {user: position([watcher.welcome, *watcher.frames])
                     for user, watcher in chats.items()}
    asked: dict[str, list[str]] = {}
    for user, watcher in chats.items():
        asked[user] = []
        for n in range(ASKS):
            ack = await watcher.request({"type": "chat.ask", "data": {"text": f"{user} {n}"}})
            assert ack["type"] == "ack", ack
            asked[user].append(ack["data"]["id"])
    for user, watcher in chats.items():
        await watcher.wait_for(is_event("chat.reply", ask_id=asked[user][0]), SETTLE_S)
    ended_before = {user: len(_endings(chats[user].frames, asked[user])) for user in chats}

    stop_began = time.monotonic()
    await asyncio.to_thread(cluster.stop, leader)
    stopped = time.monotonic()

    # While the node is down: every replica consuming again (those whose connection was
    # on it through HAProxy on another node), new leaders, and all the work done, each
    # piece once.
    await system.wait_ready(READY_S)
    all_ready = time.monotonic()
    moved = await asyncio.to_thread(cluster.replicas, vhost, EXPORTS_QUEUE)
    assert moved.leader != leader, moved
    await until(lambda: ledger.all_final(tasks), SETTLE_S, "every export final")
    exports_done = time.monotonic()
    await until(lambda: all(alice.events("run.finished", run_id=run) for run in runs),
                SETTLE_S, "every run ended")
    runs_done = time.monotonic()
    endings: dict[str, list[Frame]] = {}

    async def all_answered() -> bool:
        for user in chats:
            if len(endings.get(user, ())) < ASKS:
                endings[user] = await _recovered_endings(
                    system.port(edges[user]), tokens[user], before_asking[user], asked[user])
        return all(len(found) >= ASKS for found in endings.values())

    try:
        await until(all_answered, SETTLE_S, "every ask answered")
    finally:
        seen = {user: [(e["type"], e["data"].get("code")) for e in found]
                for user, found in endings.items()}
        print(f"\nchat endings: {seen}; the Cat was asked {dict(system.cat.asks)}")
    chats_done = time.monotonic()

    audit = ledger.audit_exports(tasks, await ledger.build_log(tasks, system.up))
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
    interrupted = {user: _check_chat(user, endings[user], asked[user], system.cat.asks[user])
                   for user in chats}
    assert all(ended_before[user] < ASKS for user in chats), ended_before  # in flight
    while_down = await asyncio.to_thread(cluster.queue_depths, vhost)
    unavailable = sorted(queue for queue, n in while_down.items() if n is None)
    session_leaders = {user: (await asyncio.to_thread(
        cluster.replicas, vhost, chat_session_queue_name(user))).leader for user in chats}

    restart_began = time.monotonic()
    await asyncio.to_thread(cluster.start_node, leader)
    # The dead letters can be counted once their node (if it is the stopped one) is back.
    depths = await asyncio.to_thread(cluster.queue_depths, vhost)
    dead = {q: n for q, n in depths.items() if n != 0 and q.endswith(".dead")}
    assert dead == {}, dead
    print(
        f"\nleader {leader} stopped in {stopped - stop_began:.2f} s; every replica ready "
        f"again {all_ready - stop_began:.2f} s after the stop began; new leader "
        f"{moved.leader}; {len(tasks)} exports done {exports_done - stop_began:.2f} s, "
        f"{len(runs)} runs ended {runs_done - stop_began:.2f} s and every ask answered "
        f"{chats_done - stop_began:.2f} s after the stop began (runs: "
        f"{[f[0]['data']['status'] for f in finished.values()]}; excel.done heard "
        f"{sorted(heard.values())}; asks ended before the stop {ended_before}, interrupted "
        f"{interrupted}; relays connected to the stopped node {relays_there}; session "
        f"leaders after {session_leaders}); node back in "
        f"{time.monotonic() - restart_began:.2f} s; unavailable while it was down: "
        f"{unavailable}"
    )
    for watcher in (alice, bob):
        await watcher.close()


async def _declare_sessions_on(
    cluster: RabbitCluster, vhost: str, node: str, users: tuple[str, ...]
) -> None:
    """Declare the users' chat session queues, as a relay does, from a connection to
    ``node``: their leader is there."""
    connection = await connect(cluster.node(node).vhost_url(vhost), name="warren-test-placer")
    async with connection:
        channel = await connection.channel()
        assert isinstance(channel, AbstractRobustChannel)
        for user in users:
            await declare_session_queue(channel, user)


def _endings(frames: list[Frame], asks: list[str]) -> list[Frame]:
    """The ``chat.reply`` and ``chat.error`` events of these asks, in arrival order."""
    wanted = set(asks)
    return [frame for frame in frames
            if "v" in frame and frame.get("type") in {"chat.reply", "chat.error"}
            and frame["data"].get("ask_id") in wanted]


async def _recovered_endings(
    port: int, token: str, since_position: float | None, asks: list[str]
) -> list[Frame]:
    """The endings of these asks as the history stream has them, in the order they were
    published: what a socket recovering from ``since_position`` is replayed."""
    assert since_position is not None
    client = await Client.connect(port, token, query=since(since_position))
    try:
        recovery = await read_recovery(client)
    finally:
        client.close()
    assert recovery.recovered is True, recovery.welcome
    return _endings(recovery.replayed, asks)


def _check_chat(user: str, endings: list[Frame], asks: list[str], cat_asks: list[str]) -> int:
    """One ending per ask, in the order asked; the Cat asked in that order, none twice.
    Returns how many were answered ``interrupted``."""
    assert [e["data"]["ask_id"] for e in endings] == asks, endings
    texts = [f"{user} {n}" for n in range(len(asks))]
    interrupted = 0
    for text, ending in zip(texts, endings):
        if ending["type"] == "chat.reply":
            assert ending["data"]["text"] == reply_for(text), ending
        else:
            assert ending["data"]["code"] == "interrupted", ending
            interrupted += 1
    # Each ask reached the Cat at most once, in the order asked; those that did not
    # were answered interrupted.
    assert cat_asks == [text for text in texts if text in cat_asks], cat_asks
    assert len(cat_asks) >= len(asks) - interrupted, (cat_asks, endings)
    return interrupted
