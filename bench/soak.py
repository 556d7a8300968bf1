"""Soak benchmark: many WebSocket clients on one edge for a long time, with mixed traffic.

``python -m bench.soak [--connections 10000] [--duration 600] [--sample 30]``

Processes (see bench/README.md, *Soak*):

* this orchestrator: starts everything, samples every ``--sample`` seconds, prints;
* the edge (``python -m services.ws_edge``) and ``--runners`` runner replicas
  (``python -m services.runner``), on a fresh vhost and an SQLite file;
* ``--drivers`` client drivers (``python -m bench.soak --worker``, uvloop). They hold the
  sockets and make the traffic over them, as users would: ``message.send`` frames to a
  user, to the sender's group and (from a client with the ``admin`` role) to
  ``broadcast``, and ``run.start`` of the runner's ``lines`` job, started again as soon
  as the last run of that client has finished.

Latency is publish to receive: the driver's clock at receipt minus the envelope's
``ts`` (the edge sets it when it publishes a ``message.send``, the runner when it
publishes a ``run.output``). ``origin`` latency is from the sending client's clock at
``send`` (messages) or the job's ``print`` (run lines) to receipt.

The drivers are :mod:`bench.soak_driver`; the tables are :mod:`bench.soak_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from bench.cli import (
    abort_notice,
    add_common_arguments,
    check_local,
    run_within,
    worker_args,
    worker_mode,
)
from bench.edge_metrics import EdgeGauges, edge_gauges
from bench.loadclients import DriverPool, slices
from bench.meter import Meter
from bench.servers import ServerProcess, clean_env, edge_process, free_port
from bench.soak_driver import KINDS, worker_main
from bench.soak_report import SAMPLE_HEADERS, Result, Sample, print_report, sample_cells
from bench.stats import Histogram
from bench.workspace import Workspace, workspace
from shared.auth import AuthSettings, TokenService

ADMIN_ROLE: Final = "admin"  # the edge's default WARREN_POLICY_BROADCAST_ROLE
CONNECT_CONCURRENCY: Final = 50
CALL_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run, from the command line."""

    connections: int
    duration_s: float
    sample_s: float
    warmup_s: float
    drivers: int
    runners: int
    group_size: int
    direct_mps: float  # message.send to a user, per second over all drivers
    group_mps: float
    broadcast_mps: float
    run_users: int  # clients that each keep one run of the lines job going
    run_lines_per_s: float
    run_s: float
    markdown: bool
    logs: Path | None
    amqp_url: str
    api_url: str

    @property
    def groups(self) -> int:
        return max(1, math.ceil(self.connections / self.group_size))


# -- clients and tokens ---------------------------------------------------------------


def make_clients(plan: Plan) -> list[dict[str, Any]]:
    """One entry per socket: user ``soak00000..`` in group ``soakg000..``, a token, and
    its part in the traffic: the first client of each driver's share may broadcast, the
    last ``run_users`` clients (spread over the drivers) run jobs."""
    tokens = TokenService(AuthSettings.from_env({"WARREN_ENV": "development"}, development=True))
    ttl = int(plan.duration_s) + 3600
    admins = {first for first, _last in slices(plan.connections, plan.drivers)}
    runs_per_driver = slices(plan.run_users, plan.drivers)
    runners = {
        last - 1 - k
        for (_first, last), (a, b) in zip(slices(plan.connections, plan.drivers), runs_per_driver)
        for k in range(b - a)
    }
    entries = []
    for i in range(plan.connections):
        user, group = f"soak{i:05d}", f"soakg{i % plan.groups:03d}"
        roles = (ADMIN_ROLE,) if i in admins else ()
        entries.append({
            "user": user, "group": group, "admin": i in admins, "runs": i in runners,
            "token": tokens.issue(user, (group,), roles, ttl_s=ttl),
        })
    return entries


def recipients(entries: Sequence[dict[str, Any]]) -> Counter[str]:
    """How many sockets receive a message to each address key the drivers count by."""
    counts: Counter[str] = Counter(f"group:{e['group']}" for e in entries)
    counts["direct"] = 1  # to one user, who has one socket
    counts["broadcast"] = len(entries)
    return counts


# -- orchestrator side ---------------------------------------------------------------


class Soak:
    """The edge, the runners and the drivers of one soak, from start to stop."""

    def __init__(self, plan: Plan, space: Workspace) -> None:
        self.plan = plan
        self.amqp_url = amqp_url = space.amqp_url
        logs = space.logs
        logs.mkdir(exist_ok=True)
        database = f"sqlite:///{space.workdir / 'soak.db'}"
        self.edge = edge_process(amqp_url, database, logs / "edge.log")
        self.runners = [
            ServerProcess(
                f"runner{i}", [sys.executable, "-m", "services.runner"],
                clean_env({
                    "WARREN_ENV": "development", "WARREN_AMQP_URL": amqp_url,
                    "WARREN_DATABASE_URL": database, "WARREN_RUNNER_HOST": "127.0.0.1",
                    "WARREN_RUNNER_PORT": str(free_port()), "WARREN_LOG_LEVEL": "INFO",
                }),
                "runner ready", logs / f"runner{i}.log",
            )
            for i in range(plan.runners)
        ]
        self.drivers = DriverPool("driver", "bench.soak", worker_args(plan.duration_s + 1800),
                                  plan.drivers, logs)
        self.meter: Meter | None = None

    async def start(self) -> None:
        """Start the edge, then the runners, then the drivers."""
        await self.edge.start()
        await asyncio.gather(*(r.start() for r in self.runners))
        await self.drivers.start()
        self.meter = Meter(
            self.edge.pid,
            {"edge": [self.edge.pid], "runners": [r.pid for r in self.runners],
             "drivers": self.drivers.pids},
            self.amqp_url,
            with_jobs={"runners"},
        )

    async def connect(self, clients_file: Path) -> int:
        """Every client of the file, each driver its share; how many connected."""
        replies = await self.drivers.call_each(
            "connect", CALL_TIMEOUT_S * 10, self.drivers.shares(self.plan.connections),
            port=self.edge.port, clients_file=str(clients_file),
            concurrency=CONNECT_CONCURRENCY, timeout_s=30.0,
        )
        for reply in replies:
            if reply["retried"] or reply["failed"]:
                print(f"  connect: {reply['retried']} retried, {reply['failed']} failed: "
                      f"{reply['errors']}", flush=True)
        return sum(int(r["connected"]) for r in replies)

    async def start_traffic(self) -> None:
        """The plan's message rates, split over the drivers, and the run loops."""
        plan = self.plan
        share = {k: v / plan.drivers for k, v in (
            ("direct", plan.direct_mps), ("group", plan.group_mps),
            ("broadcast", plan.broadcast_mps))}
        count = max(1, round(plan.run_lines_per_s * plan.run_s))
        run_args = {"count": count, "rate": plan.run_lines_per_s, "stamp": True}
        await self.drivers.call_all("start", CALL_TIMEOUT_S, rates=share, run_args=run_args,
                                    run_timeout_s=plan.run_s + 120.0)

    async def sample(self, result: Result, t0: float, before: dict[str, float],
                     edge_before: EdgeGauges | None) -> tuple[dict[str, float], EdgeGauges]:
        """One row of the sample table since ``before``; what was received after the
        warm-up also goes into ``result``. Returns the readings the next sample starts from."""
        assert self.meter is not None
        replies = await self.drivers.call_all("sample", CALL_TIMEOUT_S)
        after = self.meter.read()
        gauges = await edge_gauges(self.edge.port)
        edge_p99 = gauges.latency_since(edge_before, 0.99)
        elapsed = after["wall"] - before["wall"]
        t_s = after["wall"] - t0
        window = Histogram()
        counts: Counter[str] = Counter()
        closes: Counter[str] = Counter()
        measuring = t_s - elapsed >= self.plan.warmup_s - 1e-6
        for reply in replies:
            counts.update(reply["counts"])
            closes.update(reply["closes"])
            for kind in KINDS:
                window.merge_sparse(reply["published"][kind])
                if measuring:
                    result.published[kind].merge_sparse(reply["published"][kind])
                    result.origin[kind].merge_sparse(reply["origin"][kind])
        if measuring:
            result.measured_counts.update(counts)
            result.measured_s += elapsed
        p50, p99, top = (window.percentile(q) for q in (0.5, 0.99, 1.0))
        sample = Sample(
            t_s=t_s,
            rss_mb=self.meter.rss_mb(),
            fds=self.meter.fds(),
            open=sum(int(r["open"]) for r in replies),
            gauge=gauges.connections,
            unexpected=sum(closes.values()),
            dlv_s=sum(counts.values()) / elapsed,
            by_kind={k: counts[k] / elapsed for k in KINDS},
            p50_ms=None if p50 is None else 1000 * p50,
            p99_ms=None if p99 is None else 1000 * p99,
            max_ms=None if top is None else 1000 * top,
            edge_p99_ms=None if edge_p99 is None else 1000 * edge_p99,
            cpu=self.meter.shares(before, after),
            load=os.getloadavg()[0],
        )
        result.samples.append(sample)
        print("  " + "  ".join(sample_cells(sample)), flush=True)
        return after, gauges

    async def finish(self, result: Result, entries: Sequence[dict[str, Any]]) -> None:
        """Stop the traffic, count everything, check every socket is still open."""
        plan = self.plan
        await self.drivers.call_all("stop", plan.run_s + 200.0, timeout_s=plan.run_s + 150.0)
        replies = await self.drivers.call_all("totals", 120.0, stall_s=3.0, deadline_s=60.0)
        totals: dict[str, Any] = {"sent": Counter(), "acked": Counter(), "errors": Counter(),
                                  "received": Counter(), "unsent": 0, "unanswered": 0,
                                  "unknown": 0, "runs": Counter()}
        for reply in replies:
            for key in ("sent", "acked", "errors", "received"):
                totals[key].update(reply[key])
            for key in ("unsent", "unanswered", "unknown"):
                totals[key] += int(reply[key])
            runs = reply["runs"]
            totals["runs"].update({
                "started": runs["started"], "timeouts": runs["timeouts"],
                "lines_reported": runs["lines_reported"], "lines_received": runs["lines_received"],
                **{f"finished {k}": v for k, v in runs["finished"].items()},
                **{f"refused {k}": v for k, v in runs["refused"].items()},
            })
            result.closes.update(reply["closes"])
            result.final_open += int(reply["open"])
        result.totals = totals
        fanout = recipients(entries)
        acked: Counter[str] = totals["acked"]
        result.expected = {
            "direct": acked["direct"],
            "group": sum(n * fanout[key] for key, n in acked.items() if key.startswith("group:")),
            "broadcast": acked["broadcast"] * fanout["broadcast"],
        }
        result.edge_final = await edge_gauges(self.edge.port)

    async def disconnect(self, result: Result) -> None:
        """Close every client; wait (bounded) for the edge's connection gauge to read 0."""
        for driver in self.drivers.workers:
            with contextlib.suppress(Exception):
                await driver.call("disconnect", CALL_TIMEOUT_S * 2, timeout_s=30.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while loop.time() < deadline:
            gauges = await edge_gauges(self.edge.port)
            result.gauge_after_disconnect = gauges.connections
            if gauges.connections == 0:
                break
            await asyncio.sleep(0.5)  # polling the edge's gauge, bounded by the deadline

    async def stop(self) -> None:
        """Stop the drivers, the runners and the edge; each part even if one fails."""
        await self.drivers.stop()
        for server in (*self.runners, self.edge):
            with contextlib.suppress(Exception):
                await server.stop()


async def soak(plan: Plan, result: Result) -> None:
    """Fill ``result`` as the soak goes, so a run stopped half-way still reports what it has."""
    async with workspace(plan.amqp_url, plan.api_url, "warren-soak-", plan.logs) as space:
        bench = Soak(plan, space)
        try:
            entries = make_clients(plan)
            clients_file = space.workdir / "clients.json"
            clients_file.write_bytes(orjson.dumps(entries))
            await bench.start()
            assert bench.meter is not None
            result.rss_empty_mb = bench.meter.rss_mb()
            started = time.perf_counter()
            result.connected = await bench.connect(clients_file)
            result.connect_s = time.perf_counter() - started
            result.rss_idle_mb = bench.meter.rss_mb()
            print(f"{result.connected} of {plan.connections} clients connected in "
                  f"{result.connect_s:.1f} s; edge RSS {result.rss_empty_mb:.1f} -> "
                  f"{result.rss_idle_mb:.1f} MB", flush=True)
            if result.connected < plan.connections:
                raise RuntimeError("not every client connected")
            result.load_start = os.getloadavg()
            print("  " + "  ".join(SAMPLE_HEADERS), flush=True)
            await bench.start_traffic()
            loop = asyncio.get_running_loop()
            reading, gauges = bench.meter.read(), await edge_gauges(bench.edge.port)
            t0, started = reading["wall"], loop.time()
            for due in itertools.count(1):
                at = started + min(due * plan.sample_s, plan.duration_s)
                await asyncio.sleep(max(0.0, at - loop.time()))  # the sampling period
                reading, gauges = await bench.sample(result, t0, reading, gauges)
                if due * plan.sample_s >= plan.duration_s:
                    break
            await bench.finish(result, entries)
            result.load_end = os.getloadavg()
            await bench.disconnect(result)
        except Exception as exc:  # noqa: BLE001 - reported with what was measured so far
            result.error = abort_notice("soak aborted", exc, bench.edge, "edge")
        finally:
            await bench.stop()


# -- command line --------------------------------------------------------------------------


def parse_plan(argv: Sequence[str] | None) -> Plan:
    """The plan the command line asks for; exits with a usage error for a bad one."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000, help="sockets (10000)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (600)")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples (30)")
    parser.add_argument("--warmup", type=float,
                        help="seconds of traffic before measuring (120, at most a fifth of it)")
    parser.add_argument("--drivers", type=int, default=2, help="client driver processes (2)")
    parser.add_argument("--runners", type=int, default=2, help="runner replicas (2)")
    parser.add_argument("--group-size", type=int, default=100, help="users per group (100)")
    parser.add_argument("--direct", type=float, default=200.0, help="direct messages/s (200)")
    parser.add_argument("--group", type=float, default=20.0, help="group messages/s (20)")
    parser.add_argument("--broadcast", type=float, default=1.0, help="broadcasts/s (1)")
    parser.add_argument("--run-users", type=int, default=8,
                        help="clients that each keep one run going (8: the runners' slots)")
    parser.add_argument("--run-rate", type=float, default=50.0, help="lines/s of each run (50)")
    parser.add_argument("--run-seconds", type=float, default=30.0, help="length of a run (30)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_local(parser, args)
    if args.connections < args.drivers or args.drivers < 1:
        parser.error("--connections must be at least --drivers, which must be at least 1")
    if args.run_users >= args.connections - args.drivers:
        parser.error("--run-users must leave clients to send messages")
    if args.duration < 2 * args.sample:
        parser.error("--duration must be at least two --sample periods")
    warmup = args.warmup if args.warmup is not None else min(120.0, args.duration / 5)
    return Plan(
        connections=args.connections, duration_s=args.duration, sample_s=args.sample,
        warmup_s=warmup, drivers=args.drivers, runners=args.runners,
        group_size=args.group_size, direct_mps=args.direct, group_mps=args.group,
        broadcast_mps=args.broadcast, run_users=args.run_users,
        run_lines_per_s=args.run_rate, run_s=args.run_seconds, markdown=args.markdown,
        logs=args.logs, amqp_url=args.amqp_url, api_url=args.api_url,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The soak, or with ``--worker`` one of its client drivers."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if worker_mode(arguments, "python -m bench.soak --worker", "a soak client driver",
                   worker_main):
        return
    plan = parse_plan(arguments)
    print(f"soak: {plan.connections} clients on one edge for {plan.duration_s:.0f} s "
          f"({plan.drivers} drivers, {plan.runners} runners); direct {plan.direct_mps:g}/s, "
          f"group {plan.group_mps:g}/s x {plan.group_size}, broadcast {plan.broadcast_mps:g}/s, "
          f"{plan.run_users} runs of {plan.run_lines_per_s:g} lines/s; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    result = Result()
    run_within(soak(plan, result), plan.duration_s + plan.run_s + 900.0, "soak")
    print_report(result, plan.warmup_s, plan.markdown)


if __name__ == "__main__":
    main()
