"""The runner's own HTTP endpoints and metrics."""

from __future__ import annotations

from collections.abc import Callable

from tornado.httpclient import AsyncHTTPClient

from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.runner import collect, make_runner, start_run  # noqa: F401


async def test_health_readiness_and_metrics(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str]
) -> None:
    runner = make_runner()
    await runner.start()
    http = AsyncHTTPClient()
    base = f"http://127.0.0.1:{runner.port}"
    assert (await http.fetch(base + "/healthz")).code == 200
    assert (await http.fetch(base + "/readyz")).code == 200

    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await start_run(client, "countdown", {"start": 3, "interval_s": 0})
    await collect(client, run_id)
    bad = await start_run(client, "nope", ref="bad")
    await collect(client, bad, until="run.error")
    metrics = (await http.fetch(base + "/metrics")).body.decode()
    for sample in (
        "warren_runner_runs_queued_total 1.0",
        'warren_runner_runs_started_total{job="countdown"} 1.0',
        'warren_runner_runs_finished_total{status="completed"} 1.0',
        'warren_runner_lines_total{stream="stdout"} 4.0',
        'warren_runner_commands_refused_total{code="unknown_job"} 1.0',
        "warren_runner_active_runs 0.0",
        "warren_runner_stop_latency_seconds_count 0.0",
    ):
        assert sample in metrics, sample

    await runner.stop()
    assert not runner.is_ready()
    client.close()
