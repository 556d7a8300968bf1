"""``GET /api/runs`` and ``GET /api/runs/<id>`` on the edge, over runs made by a real runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.runner import collect, make_runner, start_run, stop_run  # noqa: F401


async def _get(port: int, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(f"http://127.0.0.1:{port}{path}", headers=headers), raise_error=False
    )
    return response.code, orjson.loads(response.body)


async def test_owner_and_admin_read_a_run_and_its_tail_others_get_404(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    await make_runner(WARREN_RUNNER_TAIL_LINES="5").start()
    alice = token_for("alice")
    client = await Client.connect(edge.port, alice)
    run_id = await start_run(client, "countdown", {"start": 8, "interval_s": 0})
    await collect(client, run_id)

    code, body = await _get(edge.port, f"/api/runs/{run_id}", alice)
    assert code == 200
    assert body["run_id"] == run_id and body["owner"] == "alice" and body["job"] == "countdown"
    assert body["status"] == "completed" and body["exit_code"] == 0 and body["lines"] == 9
    assert body["tail"] == ["4", "3", "2", "1", "liftoff"]
    code, body = await _get(edge.port, f"/api/runs/{run_id}?tail=2", alice)
    assert body["tail"] == ["1", "liftoff"]

    code, body = await _get(edge.port, f"/api/runs/{run_id}", token_for("root", roles=("admin",)))
    assert code == 200 and body["owner"] == "alice"
    code, body = await _get(edge.port, f"/api/runs/{run_id}", token_for("bob"))
    assert code == 404 and body["error"] == "not_found"
    code, body = await _get(edge.port, "/api/runs/nope", alice)
    assert code == 404
    code, body = await _get(edge.port, f"/api/runs/{run_id}", None)
    assert code == 401 and body["error"] == "token_missing"
    code, body = await _get(edge.port, f"/api/runs/{run_id}?tail=x", alice)
    assert code == 400 and body["error"] == "bad_request"
    client.close()


async def test_the_admin_role_is_the_configured_one(
    make_edge: Callable[..., EdgeServer], make_runner: Callable[..., RunnerServer],
    token_for: Callable[..., str],
) -> None:
    edge = make_edge(WARREN_ADMIN_ROLE="ops")
    await edge.start()
    await make_runner().start()
    alice = token_for("alice")
    client = await Client.connect(edge.port, alice)
    run_id = await start_run(client, "countdown", {"start": 1, "interval_s": 0})
    await collect(client, run_id)

    code, body = await _get(edge.port, f"/api/runs/{run_id}", token_for("root", roles=("ops",)))
    assert code == 200 and body["owner"] == "alice"
    code, body = await _get(edge.port, f"/api/runs/{run_id}", token_for("bob", roles=("admin",)))
    assert code == 404 and body["error"] == "not_found"
    client.close()


async def test_a_running_run_shows_its_progress_a_queued_one_its_wait_and_the_list_both(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    runner = make_runner(WARREN_RUNNER_HEARTBEAT_S="0.1", WARREN_RUNNER_HEARTBEAT_TIMEOUT_S="5",
                         WARREN_RUNNER_MAX_CONCURRENT="1", WARREN_RUNNER_MAX_PER_USER="3")
    await runner.start()
    alice = token_for("alice")
    client = await Client.connect(edge.port, alice)
    done = await start_run(client, "countdown", {"start": 1, "interval_s": 0}, ref="a")
    await collect(client, done)
    running = await start_run(client, "misbehave", {"mode": "sleep", "seconds": 60}, ref="b")
    await collect(client, running, until="run.output")
    waiting = await start_run(client, "countdown", {"start": 1, "interval_s": 0}, ref="c")
    await collect(client, waiting, until="run.queued")
    await runner.manager.heartbeat()  # type: ignore[union-attr]  # as the timer would

    code, body = await _get(edge.port, f"/api/runs/{running}", alice)
    assert code == 200
    assert body["status"] == "running" and body["finished_at"] is None
    assert body["replica"] == runner.replica
    assert body["queued_at"] <= body["started_at"]
    assert body["tail"] == ["misbehaving: sleep for 60.0 s"]

    code, body = await _get(edge.port, f"/api/runs/{waiting}", alice)
    assert code == 200
    assert body["status"] == "queued" and body["replica"] is None
    assert body["started_at"] is None and body["duration_s"] == 0 and body["tail"] == []

    code, body = await _get(edge.port, "/api/runs", alice)
    assert code == 200
    assert [r["run_id"] for r in body["runs"]] == [waiting, running, done]
    assert [r["status"] for r in body["runs"]] == ["queued", "running", "completed"]
    code, body = await _get(edge.port, "/api/runs", token_for("bob"))
    assert body == {"runs": []}

    await stop_run(client, waiting, ref="s1")
    await collect(client, waiting)
    await stop_run(client, running, ref="s2")
    await collect(client, running)
    client.close()
