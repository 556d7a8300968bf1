"""History reads: what ``history`` frames (docs/protocol.md 17.4) cost an edge at a steady
rate, against a stream of a realistic size.

``python -m bench.history_reads [--rate 100] [--fill 100000] [--duration 20] [--rounds 3]``

Processes (see bench/README.md, *History reads*):

* this orchestrator: fills the stream, runs the phases, reads the edge's CPU time
  (psutil) and ``/metrics``, and prints;
* one edge (``python -m services.ws_edge``) on a fresh vhost, history on;
* one publisher (``python -m bench.publisher``): first the fill (``--fill``
  events to ``--users`` users, their groups and ``broadcast``), then steady live events
  (``--live-rate``) for the rest of the run, so the stream keeps growing while it is read;
* ``--drivers`` drivers (``python -m bench.history_reads --worker``, uvloop; see
  :mod:`bench.history_reads_driver`) holding ``--clients`` reading clients.

Each round has a *baseline* phase (live events only) and one phase per request shape,
in alternating order: *recent* (``since`` = now - ``--recent`` s, what a client that
knows its position asks) and *full* (no ``since``: the whole retained stream is read).
Each phase sends ``--rate`` requests a second for ``--duration`` seconds, open loop,
each client asking in turn for its user's key, its group's and ``broadcast``. Before
each shape's phase, its *floor*: the same read as one pass makes, by aio-pika alone
(:mod:`bench.stream_floor`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
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
from bench.edge_metrics import delta, history_counters
from bench.history_reads_driver import worker_main
from bench.history_reads_report import Phase, Result, phase_cells, print_report
from bench.loadclients import DriverPool
from bench.meter import Meter
from bench.servers import ServerProcess, edge_process
from bench.stream_floor import read_to_marker
from bench.traffic import PublisherProcess, Traffic, make_clients
from bench.workspace import Workspace, workspace
from shared.config import HistorySettings
from shared.messaging import Address, Envelope
from shared.messaging.envelope import encode

CALL_TIMEOUT_S: Final = 60.0
SHARES: Final = {"direct": 0.8, "group": 0.18, "broadcast": 0.02}  # of the events, by kind


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run, from the command line."""

    rate: float  # history requests per second, over all clients
    clients: int
    users: int  # the users the events go to; the first ``clients`` of them read
    group_size: int
    drivers: int
    fill: int  # events published before the phases
    fill_rate: float
    live_rate: float
    duration_s: float
    rounds: int
    recent_s: float
    limit: int
    timeout_s: float  # how long after a phase its last answers are waited for
    shapes: tuple[str, ...]
    markdown: bool
    logs: Path | None
    amqp_url: str
    api_url: str
    edge_settings: dict[str, str]

    @property
    def groups(self) -> int:
        return max(1, math.ceil(self.users / self.group_size))

    def since_s(self, shape: str) -> float | None:
        return self.recent_s if shape == "recent" else None

    @property
    def window_s(self) -> float:
        return HistorySettings.from_env(self.edge_settings).window_s


class Reads:
    """The edge, the publisher and the drivers, from start to stop."""

    def __init__(self, plan: Plan, space: Workspace) -> None:
        self.plan = plan
        self.space = space
        space.logs.mkdir(exist_ok=True)
        lifetime = 1800 + plan.rounds * 4 * (plan.duration_s + plan.timeout_s)
        self.edge: ServerProcess = edge_process(
            space.amqp_url, f"sqlite:///{space.workdir / 'hr.db'}", space.logs / "edge.log",
            settings=plan.edge_settings)
        self.drivers = DriverPool("reads", "bench.history_reads", worker_args(lifetime),
                                  plan.drivers, space.logs)
        self.publisher = PublisherProcess(space.logs, lifetime)
        self.meter: Meter | None = None

    async def start(self) -> None:
        await self.edge.start()
        await self.drivers.start()
        await self.publisher.start(self.space.amqp_url, self.plan.edge_settings)
        self.meter = Meter(self.edge.pid, {"edge": [self.edge.pid], "drivers": self.drivers.pids,
                                           "publisher": [self.publisher.pid]},
                           self.space.amqp_url)

    def traffic(self, rate: float, targets: dict[str, list[str]], max_in_flight: int) -> Traffic:
        return Traffic(self.publisher.worker, {k: rate * share for k, share in SHARES.items()},
                       targets, max_in_flight)

    async def fill(self, targets: dict[str, list[str]]) -> tuple[int, float]:
        """Publish ``--fill`` events as fast as ``--fill-rate`` allows; how many, and in
        how many seconds."""
        plan = self.plan
        traffic = self.traffic(plan.fill_rate, targets, max_in_flight=512)
        started = time.monotonic()
        traffic.start()
        deadline = started + 10 * plan.fill / plan.fill_rate + 60
        while traffic.published < plan.fill and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # the fill runs in the publisher; checked twice a second
        await traffic.stop()
        return traffic.published, time.monotonic() - started

    async def phase(self, result: Phase, work: Any) -> Any:
        """Run ``work`` (an awaitable) and fill ``result`` with what the edge spent on it."""
        assert self.meter is not None
        counters0 = await history_counters(self.edge.port)
        before = self.meter.read()
        outcome = await work
        after = self.meter.read()
        counters1 = await history_counters(self.edge.port)
        result.fill(self.meter, before, after)
        result.counters = delta(counters1, counters0)
        result.rss_mb = self.meter.rss_mb()
        result.load = os.getloadavg()[0]
        return outcome

    async def connect(self, clients_file: Path) -> int:
        """Open the reading clients that are not open (all, the first time); how many
        were opened."""
        plan = self.plan
        replies = await self.drivers.call_each(
            "connect", CALL_TIMEOUT_S * 2, self.drivers.shares(plan.clients),
            port=self.edge.port, clients_file=str(clients_file), timeout_s=30.0)
        connected = sum(int(r["connected"]) for r in replies)
        if connected < plan.clients:
            raise RuntimeError(f"{connected} of {plan.clients} clients connected: "
                               f"{[r['errors'] for r in replies]}")
        return sum(int(r["reopened"]) for r in replies)

    async def reads(self, shape: str) -> list[dict[str, Any]]:
        plan = self.plan
        return await self.drivers.call_all(
            "run", plan.duration_s + plan.timeout_s + CALL_TIMEOUT_S,
            rate=plan.rate / len(self.drivers), duration_s=plan.duration_s,
            since_s=plan.since_s(shape), limit=plan.limit, timeout_s=plan.timeout_s,
        )

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.drivers.call_all("disconnect", CALL_TIMEOUT_S, timeout_s=10.0)
        await self.drivers.stop()
        await self.publisher.stop()
        with contextlib.suppress(Exception):
            await self.edge.stop()


async def history_reads(plan: Plan, result: Result) -> None:
    """Fill ``result`` phase by phase, so a run stopped half-way still reports what it has."""
    async with workspace(plan.amqp_url, plan.api_url, "warren-reads-", plan.logs) as space:
        bench = Reads(plan, space)
        live: Traffic | None = None
        try:
            users = make_clients("hr", plan.users, plan.groups)
            clients_file = space.workdir / "clients.json"
            clients_file.write_bytes(orjson.dumps(users[: plan.clients]))
            targets = {"direct": [u["user"] for u in users],
                       "group": sorted({g for u in users for g in u["groups"]}),
                       "broadcast": []}
            await bench.start()
            result.fill, result.fill_s = await bench.fill(targets)
            result.event_bytes = len(encode(Envelope(
                type="bench.tick", to=Address.user(users[-1]["user"]),
                sender=Address.service("bench"), data={"step": 10_000, "seq": 10_000})))
            print(f"stream filled: {result.fill:,} events in {result.fill_s:.0f} s; "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            live = bench.traffic(plan.live_rate, targets, max_in_flight=64)
            live.start()
            await bench.connect(clients_file)
            result.started = time.monotonic()
            for number in range(1, plan.rounds + 1):
                shapes = plan.shapes if number % 2 else tuple(reversed(plan.shapes))
                for shape in ("baseline", *shapes):
                    phase = Phase(number, shape)
                    if shape == "baseline":
                        await bench.phase(phase, asyncio.sleep(plan.duration_s))
                    else:
                        since_s = plan.since_s(shape)
                        floor = await read_to_marker(
                            space.amqp_url,
                            None if since_s is None else time.time() - since_s - plan.window_s)
                        result.floors.append((number, shape, floor))
                        phase.reopened = await bench.connect(clients_file)
                        phase.add(await bench.phase(phase, bench.reads(shape)))
                    phase.stream_events = result.fill + live.published
                    result.phases.append(phase)
                    print("  " + "  ".join(phase_cells(phase, result.baseline(number))),
                          flush=True)
        except Exception as exc:  # noqa: BLE001 - reported with what was measured so far
            result.error = abort_notice("history reads aborted", exc, bench.edge, "edge")
        finally:
            if live is not None:
                with contextlib.suppress(Exception):
                    await live.stop()
            await bench.stop()


# -- command line ---------------------------------------------------------------------------


def parse_plan(argv: Sequence[str] | None) -> Plan:
    """The plan the command line asks for; exits with a usage error for a bad one."""
    parser = argparse.ArgumentParser(prog="python -m bench.history_reads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="history requests/s (100)")
    parser.add_argument("--clients", type=int, default=300,
                        help="reading clients (300; each has one request at a time)")
    parser.add_argument("--users", type=int, default=1000,
                        help="users the events go to; the first --clients read (1000)")
    parser.add_argument("--group-size", type=int, default=100, help="users per group (100)")
    parser.add_argument("--drivers", type=int, default=1, help="driver processes (1)")
    parser.add_argument("--fill", type=int, default=100_000,
                        help="events in the stream before the phases (100000)")
    parser.add_argument("--fill-rate", type=float, default=3000.0,
                        help="events/s published for the fill (3000)")
    parser.add_argument("--live-rate", type=float, default=100.0,
                        help="events/s published during the phases (100)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of phases (3)")
    parser.add_argument("--recent", type=float, default=10.0,
                        help="the recent shape asks since now - this many s (10)")
    parser.add_argument("--limit", type=int, default=100, help="events per request (100)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for a phase's last answers (60)")
    parser.add_argument("--shapes", default="recent,full",
                        help="request shapes, comma-separated: recent, full (both)")
    add_edge_settings(parser, "a WARREN_* variable for the edge and the publisher")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_local(parser, args)
    settings = edge_settings(parser, args)
    shapes = tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    if not shapes or not set(shapes) <= {"recent", "full"}:
        parser.error("--shapes takes recent and/or full")
    if not 1 <= args.clients <= args.users or args.drivers < 1 or args.rounds < 1:
        parser.error("--clients from 1 to --users; --drivers and --rounds positive")
    if args.rate <= 0 or args.fill_rate <= 0 or not 1 <= args.limit <= 1000:
        parser.error("--rate and --fill-rate positive, --limit from 1 to 1000")
    return Plan(
        rate=args.rate, clients=args.clients, users=args.users, group_size=args.group_size,
        drivers=args.drivers, fill=args.fill, fill_rate=args.fill_rate,
        live_rate=args.live_rate, duration_s=args.duration, rounds=args.rounds,
        recent_s=args.recent, limit=args.limit, timeout_s=args.timeout, shapes=shapes,
        markdown=args.markdown, logs=args.logs, amqp_url=args.amqp_url, api_url=args.api_url,
        edge_settings=settings,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The bench, or with ``--worker`` one of its drivers."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if worker_mode(arguments, "python -m bench.history_reads --worker", "a history reader",
                   worker_main):
        return
    plan = parse_plan(arguments)
    print(f"history reads: {plan.rate:g} requests/s from {plan.clients} clients, limit "
          f"{plan.limit}, shapes {', '.join(plan.shapes)}; stream filled with {plan.fill:,} "
          f"events, then {plan.live_rate:g}/s; {plan.rounds} round(s) of {plan.duration_s:g} s "
          f"phases; load {os.getloadavg()[0]:.1f}", flush=True)
    result = Result(rate=plan.rate)
    budget = 900 + 10 * plan.fill / plan.fill_rate + plan.rounds * 3 * (
        plan.duration_s + plan.timeout_s + 60)
    run_within(history_reads(plan, result), budget, "history reads")
    print_report(result, plan.markdown)


if __name__ == "__main__":
    main()
