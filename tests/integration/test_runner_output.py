"""Runs end to end: a client on a real edge starts jobs on a real runner and reads their
output (real broker vhost, real database, real child processes)."""

from __future__ import annotations

from collections.abc import Callable

from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.runner import collect, make_runner, start_run  # noqa: F401

MAX_LINE = 100


async def _setup(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    **overrides: str,
) -> tuple[RunnerServer, Client]:
    runner = make_runner(**overrides)
    await runner.start()
    client = await Client.connect(edge.port, token_for("alice"))
    return runner, client


async def test_countdown_streams_every_line_then_finishes(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    runner, client = await _setup(edge, make_runner, token_for)
    run_id = await start_run(client, "countdown", {"start": 5, "interval_s": 0.01})
    events = await collect(client, run_id)
    assert events.queued == {"run_id": run_id, "job": "countdown",
                             "args": {"start": 5, "interval_s": 0.01}}
    assert events.started == {"run_id": run_id, "job": "countdown",
                              "args": {"start": 5, "interval_s": 0.01},
                              "replica": runner.replica}
    assert events.lines() == ["5", "4", "3", "2", "1", "liftoff"]
    assert [o["seq"] for o in events.outputs] == list(range(len(events.outputs)))
    assert events.finished is not None
    assert events.finished["status"] == "completed"
    assert events.finished["exit_code"] == 0
    assert events.finished["lines"] == 6
    client.close()


async def test_fifty_thousand_lines_arrive_in_order_without_gaps(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    runner, client = await _setup(edge, make_runner, token_for)
    run_id = await start_run(client, "lines", {"count": 50_000})
    events = await collect(client, run_id, timeout=30)
    assert events.lines("stdout") == [f"line {i}" for i in range(50_000)]
    assert [o["seq"] for o in events.outputs] == list(range(len(events.outputs)))
    # Batched: far fewer events than lines, none bigger than the batch limit.
    assert len(events.outputs) < 50_000 / 50
    assert max(len(o["lines"]) for o in events.outputs) <= runner.settings.batch_lines
    assert events.finished is not None
    assert events.finished["status"] == "completed"
    assert events.finished["lines"] == 50_000
    client.close()
