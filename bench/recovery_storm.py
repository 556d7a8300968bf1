"""Recovery storm: an edge killed under 1,000 clients, which all recover on another edge.

``python -m bench.recovery_storm [--clients 1000] [--gap 10] [--rounds 3]``

Processes (see bench/README.md, *Recovery storm*):

* this orchestrator: starts the edges one after another, kills them, reads their CPU
  time (psutil) and their ``/metrics``, and prints;
* the edges (``python -m services.ws_edge``) on one fresh vhost, history on;
* one publisher (``python -m bench.publisher``): events to the clients' users,
  groups and ``broadcast`` at steady rates, through Warren's one publish path, for the
  whole run;
* ``--drivers`` drivers (``python -m bench.recovery_storm --worker``, uvloop; see
  :mod:`bench.recovery_driver`) holding the clients.

Each round: ``--clients`` clients are on edge A and events flow. First a *control*
storm on the idle edge B: as many other users connect to it without ``since`` and are
closed again (what B's CPU spends on a connect, with nothing to replay). Then A gets
SIGKILL; after ``--gap`` seconds, in which events keep flowing, every client reconnects
to B with ``since=<its position>``, each at a random moment within ``--spread``, retrying
refusals as docs/protocol.md 8.1 says. Measured on B: the time until every client has
its ``replay.done``, its CPU over that *recovery* phase, the stream passes it made, then
its CPU over a *live* phase of ``--live`` seconds. The next round kills B and recovers
on a fresh edge. At the end the traffic stops and every client's events are checked
against what was published: lost, duplicated, out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from bench.cli import (
    abort_notice,
    add_common_arguments,
    add_edge_settings,
    check_local,
    edge_settings,
    run_within,
    worker_args,
    worker_mode,
)
from bench.edge_metrics import delta, edge_gauges, history_counters
from bench.loadclients import DriverPool
from bench.meter import Meter
from bench.recovery_driver import worker_main
from bench.recovery_report import Phase, Result, Round, print_report, round_cells
from bench.servers import ServerProcess, edge_process
from bench.stats import Histogram
from bench.traffic import PublisherProcess, Traffic, make_clients
from bench.workspace import Workspace, workspace

CALL_TIMEOUT_S: Final = 60.0
SETTLE_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run, from the command line."""

    clients: int
    group_size: int
    drivers: int
    direct_rate: float  # events/s to the clients' users, over all of them
    group_rate: float  # events/s to their groups
    broadcast_rate: float
    before_s: float  # traffic on A before the first kill
    gap_s: float
    spread_s: float
    live_s: float
    rounds: int
    attempt_s: float  # one connect's limit, welcome or replay.done included
    deadline_s: float  # a storm's limit
    base_s: float  # backoff base after a failed connect (docs/protocol.md 8.1)
    overloaded_base_s: float  # ... after 503 overloaded or 1013
    markdown: bool
    logs: Path | None
    amqp_url: str
    api_url: str
    edge_settings: dict[str, str]

    @property
    def groups(self) -> int:
        return max(1, math.ceil(self.clients / self.group_size))


class Storm:
    """The edges, the publisher and the drivers, from start to stop."""

    def __init__(self, plan: Plan, space: Workspace) -> None:
        self.plan = plan
        self.space = space
        space.logs.mkdir(exist_ok=True)
        lifetime = 1800 + plan.rounds * 600
        self.drivers = DriverPool("recovery", "bench.recovery_storm", worker_args(lifetime),
                                  plan.drivers, space.logs)
        self.publisher = PublisherProcess(space.logs, lifetime)
        self.edges: list[ServerProcess] = []

    async def start_edge(self) -> ServerProcess:
        n = len(self.edges)
        edge = edge_process(self.space.amqp_url, f"sqlite:///{self.space.workdir / 'rs.db'}",
                            self.space.logs / f"edge{n}.log", settings=self.plan.edge_settings)
        self.edges.append(edge)
        await edge.start()
        return edge

    async def start(self) -> None:
        await self.drivers.start()
        await self.publisher.start(self.space.amqp_url, self.plan.edge_settings)

    def meter(self, edge: ServerProcess) -> Meter:
        return Meter(edge.pid, {"edge": [edge.pid], "drivers": self.drivers.pids,
                                "publisher": [self.publisher.pid]}, self.space.amqp_url)

    async def load(self, name: str, clients_file: Path, count: int) -> None:
        await self.drivers.call_each("load", CALL_TIMEOUT_S, self.drivers.shares(count),
                                     set=name, clients_file=str(clients_file))

    async def storm(self, name: str, edge: ServerProcess, since: bool, spread_s: float
                    ) -> dict[str, Any]:
        """Open the set's sockets on ``edge``; the drivers' replies merged."""
        plan = self.plan
        replies = await self.drivers.call_all(
            "storm", plan.deadline_s + CALL_TIMEOUT_S, set=name, port=edge.port, since=since,
            spread_s=spread_s, attempt_s=plan.attempt_s, deadline_s=plan.deadline_s,
            base_s=plan.base_s, overloaded_base_s=plan.overloaded_base_s,
        )
        merged: dict[str, Any] = {"attempts": 0, "ready": 0, "unfinished": 0, "failures": {},
                                  "outcomes": {}, "last_welcome": 0.0, "last_ready": 0.0,
                                  "replay_events": 0, "times": Histogram(),
                                  "replays": Histogram()}
        for reply in replies:
            for key in ("attempts", "ready", "unfinished", "replay_events"):
                merged[key] += int(reply[key])
            for key in ("failures", "outcomes"):
                for what, n in reply[key].items():
                    merged[key][what] = merged[key].get(what, 0) + int(n)
            for key in ("last_welcome", "last_ready"):
                merged[key] = max(merged[key], float(reply[key]))
            for key in ("times", "replays"):
                merged[key].merge_sparse(reply[key])
        return merged

    async def events(self, name: str) -> tuple[int, int]:
        """Events the set's clients have received so far, and how many of them in replays."""
        replies = await self.drivers.call_all("count", CALL_TIMEOUT_S, set=name)
        return (sum(int(r["events"]) for r in replies), sum(int(r["replayed"]) for r in replies))

    async def measured(self, meter: Meter, edge: ServerProcess, phase: Phase, name: str,
                       work: Any) -> Any:
        """Run ``work`` (an awaitable) and fill ``phase`` with what ``edge`` spent on it
        and what the clients of set ``name`` (those on ``edge``) received meanwhile."""
        events0, replayed0 = await self.events(name)
        counters0 = await history_counters(edge.port)
        before = meter.read()
        outcome = await work
        after = meter.read()
        events1, replayed1 = await self.events(name)
        counters1 = await history_counters(edge.port)
        phase.fill(meter, before, after)
        phase.events = events1 - events0
        phase.replayed_frames = replayed1 - replayed0
        phase.counters = delta(counters1, counters0)
        phase.rss_mb = meter.rss_mb()
        return outcome

    async def settle(self, edge: ServerProcess) -> float | None:
        """Wait (bounded) until ``edge`` holds no socket; its gauge then."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            gauges = await edge_gauges(edge.port)
            if gauges.connections == 0 or time.monotonic() > deadline:
                return gauges.connections
            await asyncio.sleep(0.2)  # polling the gauge, bounded by the deadline

    async def stop(self) -> None:
        await self.drivers.stop()
        await self.publisher.stop()
        for edge in self.edges:
            with contextlib.suppress(Exception):
                await edge.stop()


async def one_round(bench: Storm, number: int, current: ServerProcess, spare: ServerProcess
                    ) -> Round:
    """Control storm on ``spare``, kill ``current``, recover every client on ``spare``,
    then a live phase on it."""
    plan = bench.plan
    result = Round(number, load=os.getloadavg()[0])
    meter = bench.meter(spare)
    control = await bench.measured(meter, spare, result.control, "control",
                                   bench.storm("control", spare, False, plan.spread_s))
    result.control.connects = int(control["ready"])
    result.control_storm = control
    await bench.drivers.call_all("disarm", CALL_TIMEOUT_S, set="control")
    await bench.drivers.call_all("close", CALL_TIMEOUT_S, set="control", timeout_s=20.0)
    await bench.settle(spare)

    await bench.drivers.call_all("disarm", CALL_TIMEOUT_S, set="main")
    killed = time.monotonic()
    os.kill(current.pid, signal.SIGKILL)
    await current.stop()  # reaps it
    lost = await bench.drivers.call_all("lost", CALL_TIMEOUT_S, set="main", timeout_s=20.0)
    result.still_open = sum(int(r["open"]) for r in lost)
    await asyncio.sleep(max(0.0, killed + plan.gap_s - time.monotonic()))  # the gap

    storm = await bench.measured(meter, spare, result.recovery, "main",
                                 bench.storm("main", spare, True, plan.spread_s))
    result.storm = storm
    result.recovery.connects = int(storm["ready"])
    await asyncio.sleep(1.0)  # the held-back events drain before the live phase
    await bench.measured(meter, spare, result.live, "main", asyncio.sleep(plan.live_s))
    return result


async def recovery_storm(plan: Plan, result: Result) -> None:
    """Fill ``result`` round by round, so a run stopped half-way still reports what it has."""
    async with workspace(plan.amqp_url, plan.api_url, "warren-recovery-", plan.logs) as space:
        bench = Storm(plan, space)
        traffic: Traffic | None = None
        try:
            main = make_clients("rs", plan.clients, plan.groups)
            control = make_clients("rc", plan.clients, plan.groups)
            files = {"main": space.workdir / "main.json", "control": space.workdir / "control.json"}
            files["main"].write_bytes(orjson.dumps(main))
            files["control"].write_bytes(orjson.dumps(control))
            await bench.start()
            current = await bench.start_edge()
            spare = await bench.start_edge()
            for name, entries in (("main", main), ("control", control)):
                await bench.load(name, files[name], len(entries))
            first = await bench.storm("main", current, False, plan.clients / 250.0)
            print(f"{first['ready']:,} clients on edge 0; load {os.getloadavg()[0]:.1f}",
                  flush=True)
            targets = {"direct": [e["user"] for e in main],
                       "group": sorted({g for e in main for g in e["groups"]}),
                       "broadcast": []}
            traffic = Traffic(bench.publisher.worker, {"direct": plan.direct_rate,
                                                "group": plan.group_rate,
                                                "broadcast": plan.broadcast_rate}, targets)
            traffic.start()
            await asyncio.sleep(plan.before_s)  # steady traffic before the first kill
            for number in range(1, plan.rounds + 1):
                current_round = await one_round(bench, number, current, spare)
                result.rounds.append(current_round)
                print("  " + "  ".join(round_cells(current_round)), flush=True)
                current = spare
                if number < plan.rounds:
                    spare = await bench.start_edge()
            await traffic.stop()
            quiet = await bench.drivers.call_all("quiet", CALL_TIMEOUT_S * 2, stall_s=3.0,
                                                 deadline_s=60.0)
            result.quiet = all(r["quiet"] for r in quiet)
            for reply in await bench.drivers.call_all("late", CALL_TIMEOUT_S, set="main"):
                result.drops.update(reply["drops"])
                result.late_ready += int(reply["ready"])
                result.late_failures.update(reply["failures"])
            replies = await bench.drivers.call_all(
                "verify", CALL_TIMEOUT_S * 5, set="main", targets=traffic.targets,
                steps=traffic.steps,
            )
            for reply in replies:
                example = reply.pop("example")
                if example and not result.example:
                    result.example = example
                result.totals.update({k: int(v) for k, v in reply.items()})
            result.steps = traffic.steps
            result.published = traffic.published
            result.publish_failed = traffic.failed
        except Exception as exc:  # noqa: BLE001 - reported with what was measured so far
            edge = bench.edges[-1] if bench.edges else None
            result.error = (abort_notice("recovery storm aborted", exc, edge, "edge")
                            if edge is not None else f"{type(exc).__name__}: {exc}")
        finally:
            if traffic is not None:
                with contextlib.suppress(Exception):
                    await traffic.stop()
            await bench.stop()


# -- command line ---------------------------------------------------------------------------


def parse_plan(argv: Sequence[str] | None) -> Plan:
    """The plan the command line asks for; exits with a usage error for a bad one."""
    parser = argparse.ArgumentParser(prog="python -m bench.recovery_storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000, help="clients, one user each (1000)")
    parser.add_argument("--group-size", type=int, default=100, help="users per group (100)")
    parser.add_argument("--drivers", type=int, default=1, help="driver processes (1)")
    parser.add_argument("--direct-rate", type=float, default=200.0,
                        help="events/s to the clients' users, round robin (200)")
    parser.add_argument("--group-rate", type=float, default=10.0,
                        help="events/s to their groups, round robin (10)")
    parser.add_argument("--broadcast-rate", type=float, default=1.0,
                        help="events/s to broadcast (1)")
    parser.add_argument("--before", type=float, default=5.0,
                        help="seconds of traffic before the first kill (5)")
    parser.add_argument("--gap", type=float, default=10.0,
                        help="seconds from the kill to the reconnects (10)")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="reconnects start at random moments within this many s (1)")
    parser.add_argument("--live", type=float, default=10.0,
                        help="seconds of the live phase measured after each recovery (10)")
    parser.add_argument("--rounds", type=int, default=3, help="kills and recoveries (3)")
    parser.add_argument("--attempt", type=float, default=30.0,
                        help="seconds one connect may take, replay included (30)")
    parser.add_argument("--deadline", type=float, default=180.0,
                        help="seconds a storm may take in all (180)")
    parser.add_argument("--base", type=float, default=0.5,
                        help="backoff base after a failed connect, s (0.5; protocol 8.1)")
    parser.add_argument("--overloaded-base", type=float, default=5.0,
                        help="backoff base after 503 overloaded or 1013, s "
                             "(5, as Warren's clients)")
    add_edge_settings(parser, "a WARREN_* variable for the edges and the publisher")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_local(parser, args)
    settings = edge_settings(parser, args)
    if args.clients < args.drivers or args.drivers < 1 or args.rounds < 1:
        parser.error("--clients must be at least --drivers, --drivers and --rounds positive")
    return Plan(
        clients=args.clients, group_size=args.group_size, drivers=args.drivers,
        direct_rate=args.direct_rate, group_rate=args.group_rate,
        broadcast_rate=args.broadcast_rate, before_s=args.before, gap_s=args.gap,
        spread_s=args.spread, live_s=args.live, rounds=args.rounds, attempt_s=args.attempt,
        deadline_s=args.deadline, base_s=args.base, overloaded_base_s=args.overloaded_base,
        markdown=args.markdown, logs=args.logs, amqp_url=args.amqp_url, api_url=args.api_url,
        edge_settings=settings,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The storm, or with ``--worker`` one of its drivers."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if worker_mode(arguments, "python -m bench.recovery_storm --worker", "a recovery driver",
                   worker_main):
        return
    plan = parse_plan(arguments)
    print(f"recovery storm: {plan.clients:,} clients in groups of {plan.group_size}, "
          f"{plan.direct_rate:g}/{plan.group_rate:g}/{plan.broadcast_rate:g} events/s to "
          f"users/groups/broadcast, gap {plan.gap_s:g} s, spread {plan.spread_s:g} s, "
          f"{plan.rounds} round(s); load {os.getloadavg()[0]:.1f}", flush=True)
    result = Result()
    budget = 600 + plan.rounds * (plan.gap_s + plan.live_s + 2 * plan.deadline_s + 120)
    run_within(recovery_storm(plan, result), budget, "recovery storm")
    print_report(result, plan.markdown)


if __name__ == "__main__":
    main()
