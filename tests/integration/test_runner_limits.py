"""Each limit, and bad run.start input, reported as run.finished or run.error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.runner import collect, make_runner, start_run, stop_run  # noqa: F401


async def _client(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    **overrides: str,
) -> Client:
    runner = make_runner(**overrides)
    await runner.start()
    return await Client.connect(edge.port, token_for("alice"))


async def test_wall_time_limit_ends_the_run_with_timeout(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_WALL_S="0.5")
    run_id = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60})
    events = await collect(client, run_id)
    assert events.finished is not None
    assert events.finished["status"] == "timeout"
    assert events.finished["reason"] == "wall time of 0.5 s exceeded"
    assert events.finished["duration_s"] < 5
    client.close()


async def test_long_lines_are_split_not_dropped(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_LINE_CHARS="100")
    run_id = await start_run(client, "lines", {"count": 2, "width": 250})
    events = await collect(client, run_id)
    lines = events.lines()
    assert [len(line) for line in lines] == [100, 100, 56, 100, 100, 56]
    assert "".join(lines[:3]) == "line 0" + "x" * 250
    assert "".join(lines[3:]) == "line 1" + "x" * 250
    assert events.finished is not None and events.finished["status"] == "completed"
    client.close()


async def test_output_limit_stops_the_run_as_failed(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_OUTPUT_BYTES="10000")
    run_id = await start_run(client, "lines", {"count": 10_000_000})
    events = await collect(client, run_id)
    assert events.finished is not None
    assert events.finished["status"] == "failed"
    assert events.finished["reason"] == "output limit of 10000 bytes reached"
    stdout = events.lines("stdout")
    assert stdout == [f"line {i}" for i in range(len(stdout))]
    assert sum(len(line) + 1 for line in stdout) <= 10_000
    assert events.lines("stderr") == [
        "[runner] output limit of 10000 bytes reached; the run is stopped"
    ]
    client.close()


async def test_runs_per_replica_wait_for_a_free_slot(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_CONCURRENT="1")
    first = await start_run(client, "countdown", {"start": 3, "interval_s": 0.1}, ref="a")
    second = await start_run(client, "countdown", {"start": 1, "interval_s": 0}, ref="b")
    order: list[tuple[str, str]] = []
    while len(order) < 4:
        frame = await client.recv()
        if frame.get("type") in {"run.started", "run.finished"}:
            order.append((frame["type"], frame["data"]["run_id"]))
    assert order == [
        ("run.started", first), ("run.finished", first),
        ("run.started", second), ("run.finished", second),
    ]
    client.close()


async def test_runs_per_user_over_the_limit_are_refused(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_PER_USER="1")
    first = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60}, ref="a")
    await collect(client, first, until="run.started")
    second = await start_run(client, "countdown", {"start": 1}, ref="b")
    refused = await collect(client, second, until="run.error")
    assert refused.errors[0]["code"] == "too_many_runs"
    assert refused.errors[0]["run_id"] == second
    await stop_run(client, first)
    await collect(client, first)
    client.close()


BAD_STARTS: list[tuple[dict[str, Any], str, str]] = [
    ({"job": "no_such_job"}, "unknown_job", "unknown job 'no_such_job'"),
    ({}, "invalid_request", "run.start needs data.job"),
    ({"job": 7}, "invalid_request", "run.start needs data.job"),
    ({"job": "countdown", "args": {"start": "ten"}}, "invalid_args",
     "start must be an integer, got 'ten'"),
    ({"job": "countdown", "args": {"start": True}}, "invalid_args", "start must be an integer"),
    ({"job": "countdown", "args": {"start": 0}}, "invalid_args", "start must be at least 1"),
    ({"job": "countdown", "args": {"nope": 1}}, "invalid_args", "unknown argument(s) 'nope'"),
    ({"job": "countdown", "args": [1, 2]}, "invalid_args", "args must be a JSON object"),
    ({"job": "countdown", "args": {"start": 1, "pad": "x" * 20_000}}, "args_too_large",
     "the limit is 8192"),
    ({"job": "http_probe", "args": {"resources": ["http://evil/"]}}, "invalid_args",
     "resources must be paths starting with '/'"),
]


async def test_bad_start_input_gets_a_clear_error(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for,
                           WARREN_RUNNER_HTTP_JOB_URL="http://127.0.0.1:9")
    for n, (data, code, message) in enumerate(BAD_STARTS):
        reply = await client.request({"type": "run.start", "ref": n, "data": data})
        assert reply["type"] == "ack"
        run_id = reply["data"]["id"]
        refused = await collect(client, run_id, until="run.error")
        assert refused.errors[0]["code"] == code, data
        assert message in refused.errors[0]["message"], refused.errors[0]
        assert refused.errors[0]["command"] == "run.start"
    # The runner is still serving: a good run goes through afterwards.
    good = await start_run(client, "countdown", {"start": 1, "interval_s": 0}, ref="good")
    events = await collect(client, good)
    assert events.finished is not None and events.finished["status"] == "completed"
    client.close()


async def test_a_job_needing_an_endpoint_is_refused_when_none_is_configured(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for)
    run_id = await start_run(client, "http_probe")
    refused = await collect(client, run_id, until="run.error")
    assert refused.errors[0]["code"] == "job_unavailable"
    client.close()
