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


async def _frames_until(
    client: Client, done: Callable[[list[tuple[str, dict[str, Any]]]], bool]
) -> list[tuple[str, dict[str, Any]]]:
    """Every run.* frame (type, data) the client reads, until ``done`` says enough."""
    seen: list[tuple[str, dict[str, Any]]] = []
    while not done(seen):
        frame = await client.recv()
        if str(frame.get("type", "")).startswith("run."):
            seen.append((frame["type"], frame["data"]))
    return seen


def _finished(*run_ids: str) -> Callable[[list[tuple[str, dict[str, Any]]]], bool]:
    return lambda seen: set(run_ids) <= {d["run_id"] for t, d in seen if t == "run.finished"}


async def test_runs_over_the_replica_limit_are_queued_and_start_when_a_slot_frees(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_CONCURRENT="1",
                           WARREN_RUNNER_MAX_PER_USER="5")
    first = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60}, ref="a")
    await collect(client, first, until="run.output")
    second = await start_run(client, "countdown", {"start": 1, "interval_s": 0}, ref="b")
    queued = await collect(client, second, until="run.queued")
    assert queued.queued == {"run_id": second, "job": "countdown",
                             "args": {"start": 1, "interval_s": 0.0}}
    # The only slot is busy, yet bad input is answered at once.
    bad = await start_run(client, "no_such_job", ref="c")
    refused = await collect(client, bad, until="run.error")
    assert refused.errors[0]["code"] == "unknown_job"

    await stop_run(client, first)
    seen = await _frames_until(client, _finished(first, second))
    order = [(t, d["run_id"]) for t, d in seen if t in {"run.started", "run.finished"}]
    assert order == [("run.finished", first), ("run.started", second), ("run.finished", second)]
    assert seen[-1][1]["status"] == "completed"
    client.close()


async def test_a_queued_run_can_be_stopped_before_it_starts(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_CONCURRENT="1")
    busy = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60}, ref="a")
    await collect(client, busy, until="run.output")
    waiting = await start_run(client, "countdown", {"start": 1, "interval_s": 0}, ref="b")
    await collect(client, waiting, until="run.queued")
    await stop_run(client, waiting, ref="s1")
    stopped = await collect(client, waiting)
    assert stopped.finished == {"run_id": waiting, "status": "stopped", "exit_code": None,
                                "duration_s": 0.0, "lines": 0, "reason": "stopped by alice"}
    assert stopped.started is None

    await stop_run(client, busy, ref="s2")
    await collect(client, busy)
    # The runs queue is first in, first out: once a later run has gone through, the
    # stopped run's turn has passed without a start.
    later = await start_run(client, "countdown", {"start": 1, "interval_s": 0}, ref="c")
    seen = await _frames_until(client, _finished(later))
    assert [d["run_id"] for t, d in seen if t == "run.started"] == [later]
    client.close()


async def test_a_run_waiting_too_long_for_a_slot_times_out(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_CONCURRENT="1",
                           WARREN_RUNNER_MAX_QUEUE_S="0.5", WARREN_RUNNER_HEARTBEAT_S="0.1")
    busy = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60}, ref="a")
    await collect(client, busy, until="run.output")
    waiting = await start_run(client, "countdown", {"start": 1}, ref="b")
    events = await collect(client, waiting)
    assert events.queued is not None and events.started is None
    assert events.finished is not None
    assert events.finished["status"] == "timeout"
    assert events.finished["reason"] == "no runner had a free slot within 0.5 s"
    await stop_run(client, busy)
    await collect(client, busy)
    client.close()


async def test_runs_per_user_over_the_limit_are_refused(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_MAX_PER_USER="2",
                           WARREN_RUNNER_MAX_CONCURRENT="1")
    first = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60}, ref="a")
    await collect(client, first, until="run.started")
    second = await start_run(client, "countdown", {"start": 1}, ref="b")
    await collect(client, second, until="run.queued")
    # One running and one queued: a third is refused, with the run id the ack gave.
    third = await start_run(client, "countdown", {"start": 1}, ref="c")
    refused = await collect(client, third, until="run.error")
    assert refused.errors[0]["code"] == "too_many_runs"
    assert refused.errors[0]["run_id"] == third
    assert "2 queued or running" in refused.errors[0]["message"]
    await stop_run(client, second, ref="s1")
    await collect(client, second)
    await stop_run(client, first, ref="s2")
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
