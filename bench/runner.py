"""Runner benchmark: a job's ``print`` to a WebSocket client, and Stop latency.

    .venv/bin/python -m bench.runner            # about a minute
    .venv/bin/python -m bench.runner --quick    # fewer lines and stops

It runs a real edge and a real runner as child processes on a fresh vhost, and one
WebSocket client in this process. Measured:

1. throughput: ``lines`` jobs printing as fast as they can; lines per second from the
   ``run.started`` event to the ``run.finished`` event, as the client receives them, and
   the CPU time per line of the runner (with the job processes it reaped) and the edge,
   which depends much less than wall time on what else the machine is doing;
2. latency at 1k lines/s: ``lines`` with ``rate=1000`` and ``stamp=true`` (each line
   carries the time of its ``print``, UTC in ISO 8601); the client subtracts it from its
   receive time;
3. stop latency: ``misbehave`` jobs that never check ``running()`` (busy loop; busy loop
   ignoring SIGTERM); time from sending ``run.stop`` to receiving ``run.finished``, with
   the default graces.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench.servers import ServerProcess, clean_env, edge_process, free_port
from shared.auth import AuthSettings, TokenService
from tests.support.client import Client
from tests.support.rabbit import BrokerAdmin

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_API_URL = "http://127.0.0.1:15672"


@dataclass
class Row:
    measure: str
    value: str
    cpu: str = ""
    target: str = ""
    result: str = ""


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of the children it has reaped (the runner's jobs)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class Session:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._ref = 0

    async def command(self, kind: str, data: dict[str, Any]) -> str:
        self._ref += 1
        reply = await self.client.request({"type": kind, "ref": self._ref, "data": data})
        if reply["type"] != "ack":
            raise RuntimeError(f"{kind} refused: {reply}")
        return str(reply["data"]["id"])

    async def until(self, run_id: str, kind: str, on_output: Any = None,
                    timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.client.recv(max(0.1, deadline - time.monotonic()))
            data = frame.get("data") or {}
            if data.get("run_id") != run_id and data.get("command_id") != run_id:
                continue
            if frame["type"] == "run.error":
                raise RuntimeError(f"run refused: {data}")
            if frame["type"] == "run.output" and on_output is not None:
                on_output(data)
            if frame["type"] == kind:
                return data


async def throughput(session: Session, count: int, width: int, runner: int, edge: int) -> Row:
    run_id = await session.command("run.start", {"job": "lines",
                                                 "args": {"count": count, "width": width}})
    await session.until(run_id, "run.started")
    cpu_before = cpu_seconds(runner), cpu_seconds(edge)
    started = time.perf_counter()
    received = 0

    def on_output(data: dict[str, Any]) -> None:
        nonlocal received
        received += len(data["lines"])

    finished = await session.until(run_id, "run.finished", on_output)
    elapsed = time.perf_counter() - started
    runner_cpu, edge_cpu = (cpu_seconds(pid) - before
                            for pid, before in zip((runner, edge), cpu_before))
    assert finished["status"] == "completed" and received == count, (finished, received)
    per_line = f"runner+job {1e6 * runner_cpu / count:.1f} µs, edge {1e6 * edge_cpu / count:.1f} µs"
    return Row(f"throughput, {count} lines of {width + 12} chars",
               f"{count / elapsed:,.0f} lines/s ({elapsed:.2f} s)", per_line)


async def latency(session: Session, rate: int, count: int) -> Row:
    run_id = await session.command("run.start", {"job": "lines", "args": {
        "count": count, "rate": rate, "stamp": True}})
    delays: list[float] = []

    def on_output(data: dict[str, Any]) -> None:
        now = time.time()
        delays.extend(now - datetime.fromisoformat(line.split()[2]).timestamp()
                      for line in data["lines"])

    await session.until(run_id, "run.finished", on_output)
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    return Row(f"line latency at {rate} lines/s ({len(delays)} lines)",
               f"p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms, max {1000 * max(delays):.1f} ms")


async def stop_latency(session: Session, args: dict[str, Any], label: str, trials: int) -> Row:
    samples: list[float] = []
    for _ in range(trials):
        run_id = await session.command("run.start", {"job": "misbehave", "args": args})
        await session.until(run_id, "run.output")  # the job is running
        sent = time.perf_counter()
        await session.command("run.stop", {"run_id": run_id})
        finished = await session.until(run_id, "run.finished")
        samples.append(time.perf_counter() - sent)
        assert finished["status"] == "stopped", finished
    p99 = percentile(samples, 0.99)
    return Row(
        f"stop latency, {label} ({trials} stops)",
        f"p50 {1000 * percentile(samples, 0.5):.0f} ms, p99 {1000 * p99:.0f} ms",
        target="p99 < 1 s", result="PASS" if p99 < 1.0 else "FAIL",
    )


async def run(args: argparse.Namespace) -> list[Row]:
    admin = BrokerAdmin(args.amqp_url, args.api_url)
    with tempfile.TemporaryDirectory(prefix="warren-bench-runner-") as tmp:
        workdir = Path(tmp)
        vhost = await asyncio.to_thread(admin.create_vhost, "warren-bench")
        servers: list[ServerProcess] = []
        try:
            amqp = admin.vhost_url(vhost)
            database = f"sqlite:///{workdir / 'bench.db'}"
            edge = edge_process(amqp, database, workdir / "edge.log")
            servers.append(edge)
            await edge.start()
            runner_env = clean_env({
                "WARREN_ENV": "development", "WARREN_AMQP_URL": amqp,
                "WARREN_DATABASE_URL": database, "WARREN_RUNNER_HOST": "127.0.0.1",
                "WARREN_RUNNER_PORT": str(free_port()), "WARREN_LOG_LEVEL": "INFO",
                **({"WARREN_RUNNER_BATCH_INTERVAL_S": str(args.batch_interval)}
                   if args.batch_interval else {}),
            })
            runner = ServerProcess("runner", [sys.executable, "-m", "services.runner"],
                                   runner_env, "runner ready", workdir / "runner.log")
            servers.append(runner)
            await runner.start()
            token = TokenService(AuthSettings.from_env({}, development=True)).issue(
                "bench", (), ())
            client = await Client.connect(edge.port, token)
            session = Session(client)
            quick = args.quick
            rows = [
                await throughput(session, 50_000 if quick else 200_000, 0, runner.pid, edge.pid),
                await throughput(session, 20_000 if quick else 50_000, 200, runner.pid, edge.pid),
                await latency(session, 1000, 2000 if quick else 5000),
                await stop_latency(session, {"mode": "busy", "seconds": 60},
                                   "busy loop", 5 if quick else 20),
                await stop_latency(session, {"mode": "sleep", "seconds": 60},
                                   "time.sleep", 5 if quick else 20),
                await stop_latency(session, {"mode": "busy", "seconds": 60,
                                             "ignore_sigterm": True},
                                   "busy loop ignoring SIGTERM", 5 if quick else 20),
            ]
            client.close()
            return rows
        finally:
            for server in reversed(servers):
                await server.stop()
            await asyncio.to_thread(admin.delete_vhost, vhost)


def print_table(rows: Sequence[Row]) -> None:
    headers = ("measure", "value", "CPU per line", "target", "result")
    cells = [(r.measure, r.value, r.cpu, r.target, r.result) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cell in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths)) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer lines and stops")
    parser.add_argument("--batch-interval", type=float, default=0.0,
                        help="WARREN_RUNNER_BATCH_INTERVAL_S for the runner (default: its own)")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--api-url", default=DEFAULT_API_URL)
    args = parser.parse_args(argv)
    rows = asyncio.run(asyncio.wait_for(run(args), 600))
    print_table(rows)


if __name__ == "__main__":
    main()
