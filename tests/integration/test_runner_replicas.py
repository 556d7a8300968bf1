"""Several replicas: sharing the load, and runs of a replica that dies, freezes, restarts
or is told to stop (replicas as real OS processes where their death is the point)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import psutil

from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.runner import (  # noqa: F401
    RunnerProcess,
    collect,
    make_runner,
    runner_env,
    start_run,
)


async def test_two_replicas_share_the_load(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    for _ in range(2):
        await make_runner(WARREN_RUNNER_MAX_CONCURRENT="1").start()
    client = await Client.connect(edge.port, token_for("alice"))
    # Each replica takes one run at a time, so two runs at once need both replicas.
    first = await start_run(client, "countdown", {"start": 20, "interval_s": 0.05}, ref="a")
    second = await start_run(client, "countdown", {"start": 20, "interval_s": 0.05}, ref="b")
    replicas: dict[str, str] = {}
    finished: set[str] = set()
    while len(finished) < 2:
        frame = await client.recv()
        if frame.get("type") == "run.started":
            replicas[frame["data"]["run_id"]] = frame["data"]["replica"]
            assert not finished, "the second run waited for the first"
        elif frame.get("type") == "run.finished":
            assert frame["data"]["status"] == "completed"
            finished.add(frame["data"]["run_id"])
    assert set(replicas) == {first, second}
    assert len(set(replicas.values())) == 2
    client.close()


async def _start_on_process(
    client: Client, runner: RunnerProcess, instance: str
) -> str:
    run_id = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60})
    events = await collect(client, run_id, until="run.output")
    assert events.started is not None and events.started["replica"] == instance
    return run_id


async def test_a_replica_killed_mid_run_has_its_run_marked_failed(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    amqp_url: str, database_url: str,
) -> None:
    doomed = await RunnerProcess(runner_env(
        amqp_url, database_url, WARREN_INSTANCE_ID="runner-doomed")).start()
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await _start_on_process(client, doomed, "runner-doomed")
    survivor = make_runner(WARREN_RUNNER_OWNER_PROBE_S="0.5")
    await survivor.start()
    orphans = psutil.Process(doomed.pid).children(recursive=True)
    assert orphans, "the job's process"
    await doomed.kill()  # SIGKILL: the broker hands the start command to the survivor
    events = await collect(client, run_id)
    assert events.finished is not None
    assert events.finished["status"] == "failed"
    assert events.finished["reason"] == "runner runner-doomed died"
    # The orphaned job notices its runner is gone (stdin closes) and kills its group.
    _gone, alive = await asyncio.to_thread(psutil.wait_procs, orphans, 10)
    assert not alive
    client.close()


async def test_a_restarted_replica_marks_its_old_runs_failed(
    edge: EdgeServer, token_for: Callable[..., str], amqp_url: str, database_url: str,
) -> None:
    env = runner_env(amqp_url, database_url, WARREN_INSTANCE_ID="runner-phoenix")
    first = await RunnerProcess(env).start()
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await _start_on_process(client, first, "runner-phoenix")
    await first.kill()
    again = await RunnerProcess(env).start()
    events = await collect(client, run_id)
    assert events.finished is not None
    assert events.finished["status"] == "failed"
    assert events.finished["reason"] == "runner runner-phoenix restarted while the run was running"
    await again.terminate()
    client.close()


async def test_a_frozen_replica_loses_its_runs_through_the_heartbeat(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    amqp_url: str, database_url: str,
) -> None:
    beat = {"WARREN_RUNNER_HEARTBEAT_S": "0.2", "WARREN_RUNNER_HEARTBEAT_TIMEOUT_S": "1"}
    frozen = await RunnerProcess(runner_env(
        amqp_url, database_url, WARREN_INSTANCE_ID="runner-frozen", **beat)).start()
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await _start_on_process(client, frozen, "runner-frozen")
    await make_runner(**beat).start()
    os.kill(frozen.pid, signal.SIGSTOP)  # alive for the broker, silent in the database
    try:
        events = await collect(client, run_id)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert events.finished is not None
    assert events.finished["status"] == "failed"
    assert events.finished["reason"] == "runner runner-frozen stopped sending heartbeats"
    # Thawed, the replica sees the run was failed elsewhere and ends its job silently.
    await frozen.wait_log("run already ended elsewhere")
    await frozen.terminate()
    client.close()


async def test_a_stopping_replica_finishes_short_runs_stops_long_ones_and_takes_no_new_ones(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    leaving = make_runner(WARREN_RUNNER_SHUTDOWN_DEADLINE_S="4", WARREN_RUNNER_MAX_PER_USER="3")
    await leaving.start()
    client = await Client.connect(edge.port, token_for("alice"))
    short = await start_run(client, "countdown", {"start": 5, "interval_s": 0.1}, ref="a")
    long = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60}, ref="b")
    frames: list[tuple[str, dict[str, Any]]] = []

    async def until(done: Callable[[], bool]) -> None:
        while not done():
            frame = await client.recv(20)
            if str(frame.get("type", "")).startswith("run."):
                frames.append((frame["type"], frame["data"]))

    def of(kind: str) -> dict[str, dict[str, Any]]:
        return {data["run_id"]: data for t, data in frames if t == kind}

    await until(lambda: {short, long} <= set(of("run.started")))
    staying = make_runner(WARREN_RUNNER_MAX_PER_USER="3")
    await staying.start()
    # The stop begins before the next start can reach any replica (the loop runs the
    # task's first step, which refuses further runs, before any I/O completes).
    stopping = asyncio.create_task(leaving.stop())
    late = await start_run(client, "countdown", {"start": 1, "interval_s": 0}, ref="c")
    await until(lambda: {short, long, late} <= set(of("run.finished")))
    await stopping

    started, finished = of("run.started"), of("run.finished")
    assert started[short]["replica"] == started[long]["replica"] == leaving.replica
    assert finished[short]["status"] == "completed"
    assert finished[long]["status"] == "stopped"
    assert finished[long]["reason"] == "runner shutting down"
    assert started[late]["replica"] == staying.replica
    assert finished[late]["status"] == "completed"
    client.close()


async def test_sigterm_stops_running_runs_within_the_deadline(
    edge: EdgeServer, token_for: Callable[..., str], amqp_url: str, database_url: str,
) -> None:
    runner = await RunnerProcess(runner_env(
        amqp_url, database_url, WARREN_INSTANCE_ID="runner-leaving",
        WARREN_RUNNER_SHUTDOWN_DEADLINE_S="1")).start()
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await _start_on_process(client, runner, "runner-leaving")
    assert await runner.terminate() == 0
    events = await collect(client, run_id)
    assert events.finished is not None
    assert events.finished["status"] == "stopped"
    assert events.finished["reason"] == "runner shutting down"
    assert events.finished["duration_s"] < 10
    client.close()
