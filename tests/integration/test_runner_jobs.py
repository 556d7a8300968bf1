"""The shipped jobs, and output capture from every source: print, stderr, the raw file
descriptor, the C library's stdio (as C extensions write), grandchild processes, a
crashing job, and a job that leaves a process behind."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

import psutil
import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

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


@pytest.mark.parametrize("via", ["fd", "c_stdio", "subprocess"])
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_output_from_raw_writes_and_grandchildren_is_captured(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    via: str, stream: str,
) -> None:
    client = await _client(edge, make_runner, token_for)
    run_id = await start_run(client, "lines", {"count": 2000, "via": via, "stream": stream})
    events = await collect(client, run_id)
    assert events.lines(stream) == [f"line {i}" for i in range(2000)]
    assert {o["stream"] for o in events.outputs} == {stream}
    assert events.finished is not None and events.finished["status"] == "completed"
    client.close()


async def test_c_stdio_lines_arrive_as_they_are_printed(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for)
    # Line 1 is due 2 s after line 0. Had the C library buffered the pipe, line 0 would
    # only arrive with line 1, or when the job ends.
    run_id = await start_run(client, "lines", {"count": 2, "rate": 0.5, "via": "c_stdio"})
    events = await collect(client, run_id, until="run.output")
    assert events.outputs[0]["lines"] == ["line 0"] and events.finished is None
    await stop_run(client, run_id)
    events = await collect(client, run_id, events=events)
    assert events.lines() == ["line 0"]
    assert events.finished is not None and events.finished["status"] == "stopped"
    client.close()


async def test_stamped_lines_carry_a_readable_utc_time_of_their_print(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for)
    before = datetime.now(timezone.utc)
    run_id = await start_run(client, "lines", {"count": 3, "stamp": True})
    events = await collect(client, run_id)
    after = datetime.now(timezone.utc)
    printed = events.lines()
    assert [line.rsplit(" ", 1)[0] for line in printed] == ["line 0", "line 1", "line 2"]
    stamps = [line.rsplit(" ", 1)[1] for line in printed]
    for text in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    times = [datetime.fromisoformat(text) for text in stamps]
    assert before <= times[0] <= times[1] <= times[2] <= after
    client.close()


def _ended(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def test_processes_a_job_leaves_behind_are_killed_when_it_ends(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for)
    run_id = await start_run(client, "misbehave", {"mode": "orphan", "seconds": 60})
    events = await collect(client, run_id)
    assert events.finished is not None and events.finished["status"] == "completed"
    left = events.lines()[-1]
    assert left.startswith("left process ")
    assert _ended(int(left.split()[2]))
    client.close()


async def test_a_crashing_job_fails_with_its_traceback_on_stderr(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for)
    run_id = await start_run(client, "misbehave", {"mode": "crash"})
    events = await collect(client, run_id)
    assert events.lines("stdout") == ["misbehaving: crash for 30.0 s"]
    assert events.lines("stderr")[0] == "Traceback (most recent call last):"
    assert events.lines("stderr")[-1] == "RuntimeError: crashed on purpose"
    assert events.finished is not None
    assert events.finished["status"] == "failed"
    assert events.finished["exit_code"] == 1
    assert events.finished["reason"] == "job exited with code 1"
    client.close()


async def test_primes_reports_progress_and_the_right_count(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    client = await _client(edge, make_runner, token_for)
    run_id = await start_run(client, "primes", {"limit": 100_000, "progress_steps": 4})
    events = await collect(client, run_id)
    lines = events.lines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "progress 25%", "progress 50%", "progress 75%", "progress 100%"
    ]
    assert lines[-1] == "9592 primes below 100000; the largest is 99991"
    client.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[str]:
    """A local Tornado server for the http_probe job: /ok answers 200, /missing 404."""

    class Ok(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("ok")

    app = tornado.web.Application([(r"/ok", Ok)])
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    server.stop()
    await server.close_all_connections()


async def test_http_probe_summarises_each_resource(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    endpoint: str,
) -> None:
    client = await _client(edge, make_runner, token_for, WARREN_RUNNER_HTTP_JOB_URL=endpoint)
    run_id = await start_run(
        client, "http_probe", {"resources": ["/ok", "/missing"], "requests": 30, "concurrency": 8}
    )
    events = await collect(client, run_id)
    lines = events.lines()
    assert lines[0] == f"probing {endpoint} with 30 requests per resource, 8 at a time"
    assert lines[1].startswith("GET /ok: 30 requests, 30 ok, statuses {'200': 30}, p50 ")
    assert lines[2].startswith("GET /missing: 30 requests, 0 ok, statuses {'404': 30}, p50 ")
    assert events.finished is not None and events.finished["status"] == "completed"
    client.close()
