"""Stop: cooperative jobs, jobs stuck in sleep or a busy loop, jobs ignoring SIGTERM, Stop
from a client on another edge, Stop by a non-owner or an admin, Stop of a finished run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shared.db import UserStore
from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.runner import collect, make_runner, start_run, stop_run  # noqa: F401


async def _runner(make_runner: Callable[..., RunnerServer], **overrides: str) -> RunnerServer:
    runner = make_runner(**overrides)
    await runner.start()
    return runner


async def test_cooperative_job_ends_cleanly_on_stop(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    # A long grace: the job must end through running(), not through a signal.
    await _runner(make_runner, WARREN_RUNNER_STOP_GRACE_S="10")
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await start_run(client, "countdown", {"start": 1000, "interval_s": 0.05})
    events = await collect(client, run_id, until="run.output")
    await stop_run(client, run_id)
    events = await collect(client, run_id, events=events)
    assert events.finished is not None
    assert events.finished["status"] == "stopped"
    assert events.finished["exit_code"] == 0  # the job returned by itself
    assert events.finished["reason"] == "stopped by alice"
    assert events.lines()[-1].startswith("stopped at")
    client.close()


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        ({"mode": "sleep", "seconds": 60}, -15),
        ({"mode": "busy", "seconds": 60}, -15),
        ({"mode": "busy", "seconds": 60, "ignore_sigterm": True}, -9),
    ],
    ids=["sleep", "busy", "busy-ignoring-sigterm"],
)
async def test_non_cooperative_job_is_signalled(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    args: dict[str, object], exit_code: int,
) -> None:
    runner = await _runner(make_runner)
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await start_run(client, "misbehave", args)
    events = await collect(client, run_id, until="run.output")  # the job is running
    await stop_run(client, run_id)
    events = await collect(client, run_id, events=events)
    assert events.finished is not None
    assert events.finished["status"] == "stopped"
    assert events.finished["exit_code"] == exit_code
    assert runner.metrics.stop_latency._sum.get() > 0  # noqa: SLF001
    client.close()


async def test_stop_from_another_edge_reaches_the_owning_replica(
    make_edge: Callable[..., EdgeServer], make_runner: Callable[..., RunnerServer],
    token_for: Callable[..., str],
) -> None:
    edge_a, edge_b = make_edge(), make_edge()
    await edge_a.start()
    await edge_b.start()
    owner = await _runner(make_runner)
    on_a = await Client.connect(edge_a.port, token_for("alice"))
    run_id = await start_run(on_a, "misbehave", {"mode": "sleep", "seconds": 60})
    events = await collect(on_a, run_id, until="run.output")
    assert events.started is not None and events.started["replica"] == owner.replica
    # A second replica joins, and the owner stops consuming run.stop: the stop can only
    # reach the owner through the second replica's forward to its control queue.
    other = await _runner(make_runner)
    assert owner._stops is not None  # noqa: SLF001
    await owner._stops.stop_consuming()  # noqa: SLF001
    on_b = await Client.connect(edge_b.port, token_for("alice"))
    await stop_run(on_b, run_id)
    events = await collect(on_a, run_id, events=events)
    assert events.finished is not None and events.finished["status"] == "stopped"
    assert other.metrics.forwarded._value.get() == 1  # noqa: SLF001
    on_a.close()
    on_b.close()


@pytest.mark.parametrize("admin_role", ["admin", "ops"])
async def test_stop_by_a_non_owner_is_refused_and_by_an_admin_allowed(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    users: UserStore, admin_role: str,
) -> None:
    users.add("root", "pw-root-123", roles=(admin_role,))
    # bob has a role named "admin", which is not the admin role when WARREN_ADMIN_ROLE=ops
    users.add("bob", "pw-bob-123", roles=("admin",) if admin_role != "admin" else ())
    await _runner(make_runner, WARREN_ADMIN_ROLE=admin_role)
    alice = await Client.connect(edge.port, token_for("alice"))
    bob = await Client.connect(edge.port, token_for("bob"))
    root = await Client.connect(edge.port, token_for("root"))
    run_id = await start_run(alice, "misbehave", {"mode": "sleep", "seconds": 60})
    events = await collect(alice, run_id, until="run.output")

    stop_id = await stop_run(bob, run_id)
    refused = await collect(bob, run_id, until="run.error", command_id=stop_id)
    assert refused.errors[0]["code"] == "forbidden"
    assert refused.errors[0]["command"] == "run.stop"

    await stop_run(root, run_id)
    events = await collect(alice, run_id, events=events)
    assert events.finished is not None
    assert events.finished["status"] == "stopped"
    assert events.finished["reason"] == "stopped by root"
    for client in (alice, bob, root):
        client.close()


async def test_stop_of_a_finished_or_unknown_run_is_an_error(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    await _runner(make_runner)
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await start_run(client, "countdown", {"start": 1, "interval_s": 0})
    await collect(client, run_id)

    stop_id = await stop_run(client, run_id)
    refused = await collect(client, run_id, until="run.error", command_id=stop_id)
    assert refused.errors[0]["code"] == "run_finished"
    assert "completed" in refused.errors[0]["message"]

    stop_id = await stop_run(client, "no-such-run", ref="stop2")
    refused = await collect(client, "no-such-run", until="run.error", command_id=stop_id)
    assert refused.errors[0]["code"] == "unknown_run"

    reply = await client.request({"type": "run.stop", "ref": "s3", "data": {"run_id": 42}})
    refused = await collect(client, "x", until="run.error", command_id=reply["data"]["id"])
    assert refused.errors[0]["code"] == "invalid_request"
    client.close()
