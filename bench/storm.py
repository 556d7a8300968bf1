"""Connection storm: thousands of WebSocket connects per second on one edge.

``python -m bench.storm [--rate 2000] [--duration 20] [--hold 1] [--rounds 2]``

Processes (see bench/README.md, *Connection storm*):

* this orchestrator: polls the edge's ``/readyz`` on a fresh connection every
  ``--ready-period`` seconds (as a kubelet does), samples the edge's RSS, and prints;
* the edge (``python -m services.ws_edge``) on a fresh vhost;
* ``--drivers`` storm drivers (``python -m bench.storm --worker``, uvloop). Each opens
  its share of the connections on a fixed schedule (open loop: a slow edge does not
  slow the offered rate), each with a JWT in the query string; a connection counts as
  made when its ``welcome`` arrives, stays ``--hold`` seconds, then closes normally.

Each round is one storm; the rounds after the first show whether memory the first one
left behind is reused (a leak grows round after round). A small warm-up storm runs first
so that the "before" RSS already includes what any first connection allocates once.

The drivers are :mod:`bench.storm_driver`; the tables are :mod:`bench.storm_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import urllib.parse
import urllib.request
from base64 import b64encode
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
from bench.edge_metrics import EdgeGauges, edge_gauges, http_get
from bench.loadclients import DriverPool
from bench.meter import Meter
from bench.servers import edge_process
from bench.storm_driver import CLOSE_TIMEOUT_S, worker_main
from bench.storm_report import ReadyPoll, Result, Round, print_report, round_cells
from bench.workspace import Workspace, workspace
from shared.auth import AuthSettings, TokenService
from shared.messaging.names import EDGE_EXCHANGE, edge_queue_name

SETTLE_TIMEOUT_S: Final = 120.0  # longest wait for the edge's gauge to come back to 0
RSS_PERIOD_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run, from the command line."""

    rate: float  # connects per second, over all drivers
    duration_s: float
    hold_s: float
    rounds: int
    users: int
    group_size: int
    drivers: int
    timeout_s: float  # a connect that has no welcome by then failed
    ready_period_s: float
    slow_s: float  # a /readyz answer slower than this counts as slow
    settle_s: float  # after the gauge is back to 0, wait this long before "after"
    markdown: bool
    logs: Path | None
    amqp_url: str
    api_url: str
    edge_settings: dict[str, str]  # more WARREN_* variables for the edge


# -- orchestrator side -------------------------------------------------------------------


class Storm:
    """The edge and the drivers of a storm, from start to stop; one round at a time."""

    def __init__(self, plan: Plan, space: Workspace) -> None:
        self.plan = plan
        self.vhost = space.vhost
        logs = space.logs
        logs.mkdir(exist_ok=True)
        self.edge = edge_process(space.amqp_url, f"sqlite:///{space.workdir / 'storm.db'}",
                                 logs / "edge.log", settings=plan.edge_settings)
        lifetime = plan.rounds * (plan.duration_s + 300) + 600
        self.drivers = DriverPool("storm", "bench.storm", worker_args(lifetime), plan.drivers,
                                  logs)
        self.meter: Meter | None = None
        self._amqp_url = space.amqp_url

    async def start(self) -> None:
        """Start the edge, then the drivers."""
        await self.edge.start()
        await self.drivers.start()
        self.meter = Meter(self.edge.pid, {"edge": [self.edge.pid], "drivers": self.drivers.pids},
                           self._amqp_url)

    def rss_mb(self) -> float:
        assert self.meter is not None
        return self.meter.rss_mb()

    async def round(self, result: Round, clients_file: Path, rate: float, duration_s: float,
                    hold_s: float) -> None:
        """One storm of ``rate`` connects/s for ``duration_s``, each held ``hold_s``, with the
        probes and the edge's memory watched meanwhile; then until the edge is idle again."""
        plan = self.plan
        assert self.meter is not None
        result.rss_before_mb = result.rss_peak_mb = self.rss_mb()
        result.offered = len(self.drivers) * max(1, round(rate / len(self.drivers) * duration_s))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        watchers = [
            asyncio.create_task(self._poll_ready(result, t0, stop)),
            asyncio.create_task(self._watch(result, stop)),
        ]
        before, edge_before = self.meter.read(), await edge_gauges(self.edge.port)
        drops_before = listen_drops()
        try:
            each = [{**share, "source": f"127.0.0.{2 + i}"}  # one source address per driver
                    for i, share in enumerate(self.drivers.shares(plan.users))]
            replies = await self.drivers.call_each(
                "storm", duration_s + plan.timeout_s + hold_s + CLOSE_TIMEOUT_S + 120.0, each,
                port=self.edge.port, clients_file=str(clients_file),
                rate=rate / len(self.drivers), duration_s=duration_s, hold_s=hold_s,
                timeout_s=plan.timeout_s,
            )
            result.cpu = self.meter.shares(before, self.meter.read())
            result.listen_drops = listen_drops() - drops_before
            result.load = os.getloadavg()[0]
            self._add(result, replies)
            replied = loop.time()
            await self._settle(result, replied, edge_before)
        finally:
            stop.set()
            await asyncio.gather(*watchers, return_exceptions=True)
        result.rss_after_mb = self.rss_mb()

    def _add(self, result: Round, replies: Sequence[dict[str, Any]]) -> None:
        for reply in replies:
            result.attempted += int(reply["attempted"])
            result.connected += int(reply["connected"])
            result.failures.update(reply["failures"])
            result.upgrade.merge_sparse(reply["upgrade"])
            result.latency.merge_sparse(reply["latency"])
            result.lag.merge_sparse(reply["lag"])
            result.dropped_in_hold += int(reply["dropped_in_hold"])
            result.client_closes.update(reply["closes"])
            result.close_timeouts += int(reply["close_timeouts"])
            result.stuck += int(reply["stuck"])
            result.offered_s = max(result.offered_s, float(reply["offered_s"]))
            if reply["last_welcome"] is not None:
                result.welcome_span_s = max(result.welcome_span_s, float(reply["last_welcome"]))

    async def _settle(self, result: Round, since: float, edge_before: EdgeGauges) -> None:
        """Wait (bounded) until the edge is idle again: its connection gauge at 0, and the
        broker holding no binding of its queue but ``broadcast`` (the unbinds are done);
        then ``settle_s`` more before memory is read."""
        loop = asyncio.get_running_loop()
        deadline = since + SETTLE_TIMEOUT_S
        while loop.time() < deadline:
            gauges = await edge_gauges(self.edge.port)
            if result.zero_after_s is None and gauges.connections == 0:
                result.zero_after_s = loop.time() - since
            if (result.zero_after_s is not None
                    and await asyncio.to_thread(self._broker_bindings) == 1):
                result.unbound_after_s = loop.time() - since
                break
            await asyncio.sleep(0.5)  # polling the gauge and the broker, bounded by the deadline
        await asyncio.sleep(self.plan.settle_s)
        gauges = await edge_gauges(self.edge.port)
        result.edge_closes = {code: n - edge_before.closes.get(code, 0.0)
                              for code, n in gauges.closes.items()
                              if n > edge_before.closes.get(code, 0.0)}
        result.gauge_after = gauges.connections
        result.bindings_after = gauges.bindings
        result.broker_bindings_after = await asyncio.to_thread(self._broker_bindings)

    def _broker_bindings(self) -> int | None:
        """Bindings of ``warren.edges`` to edge queues in the vhost, as the broker says."""
        plan = self.plan
        parsed = urllib.parse.urlsplit(plan.amqp_url)
        credentials = f"{parsed.username or 'guest'}:{parsed.password or 'guest'}"
        request = urllib.request.Request(
            f"{plan.api_url.rstrip('/')}/api/bindings/{urllib.parse.quote(self.vhost, safe='')}",
            headers={"Authorization": "Basic " + b64encode(credentials.encode()).decode()},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                bindings = orjson.loads(response.read())
        except OSError:
            return None
        prefix = edge_queue_name("")
        return sum(1 for b in bindings if b["source"] == EDGE_EXCHANGE
                   and b["destination"].startswith(prefix))

    async def _poll_ready(self, result: Round, t0: float, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        period, timeout = self.plan.ready_period_s, max(5.0, 5 * self.plan.slow_s)
        while not stop.is_set():
            begun = loop.time()
            try:
                status, _body = await http_get(self.edge.port, "/readyz", timeout)
            except (OSError, TimeoutError, ValueError, IndexError):
                status = 0
            result.polls.append(ReadyPoll(begun - t0, status, loop.time() - begun))
            with contextlib.suppress(TimeoutError):  # the probe period, or stop
                await asyncio.wait_for(stop.wait(), max(0.0, begun + period - loop.time()))

    async def _watch(self, result: Round, stop: asyncio.Event) -> None:
        """The edge's peak RSS, and its connection gauge every second."""
        loop = asyncio.get_running_loop()
        next_gauge = loop.time()
        while not stop.is_set():
            result.rss_peak_mb = max(result.rss_peak_mb, self.rss_mb())
            if loop.time() >= next_gauge:
                next_gauge += 1.0
                with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                    gauges = await edge_gauges(self.edge.port, timeout_s=5.0)
                    result.gauge_peak = max(result.gauge_peak, gauges.connections)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RSS_PERIOD_S)

    async def stop(self) -> None:
        """Stop the drivers and the edge; each part even if one fails."""
        await self.drivers.stop()
        with contextlib.suppress(Exception):
            await self.edge.stop()


def listen_drops() -> int:
    """SYNs the host's kernel dropped because a listening socket's accept queue was full
    (``TcpExt: ListenDrops``; host-wide, so other programs' count too)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split())).get("ListenDrops", 0))
    return 0


def make_clients(plan: Plan) -> list[dict[str, Any]]:
    """Users ``storm00000..`` in groups of ``group_size``, each with a token."""
    tokens = TokenService(AuthSettings.from_env({"WARREN_ENV": "development"}, development=True))
    groups = max(1, math.ceil(plan.users / plan.group_size))
    return [
        {"user": f"storm{i:05d}",
         "token": tokens.issue(f"storm{i:05d}", (f"stormg{i % groups:03d}",), (), ttl_s=7200)}
        for i in range(plan.users)
    ]


async def storm(plan: Plan, result: Result) -> None:
    """Fill ``result`` round by round, so a run stopped half-way still reports what it has."""
    async with workspace(plan.amqp_url, plan.api_url, "warren-storm-", plan.logs) as space:
        bench = Storm(plan, space)
        try:
            clients_file = space.workdir / "clients.json"
            clients_file.write_bytes(orjson.dumps(make_clients(plan)))
            await bench.start()
            result.rss_start_mb = bench.rss_mb()
            result.load_start = os.getloadavg()[0]
            warm = Round("warm-up")
            await bench.round(warm, clients_file, rate=min(200.0, plan.rate), duration_s=2.5,
                              hold_s=min(0.5, plan.hold_s))
            result.rounds.append(warm)
            print(f"warm-up: {warm.connected} connects; edge RSS {result.rss_start_mb:.1f} -> "
                  f"{warm.rss_after_mb:.1f} MB", flush=True)
            for n in range(1, plan.rounds + 1):
                current = Round(f"storm {n}")
                await bench.round(current, clients_file, plan.rate, plan.duration_s, plan.hold_s)
                result.rounds.append(current)
                print("  " + "  ".join(round_cells(current, plan.slow_s)), flush=True)
        except Exception as exc:  # noqa: BLE001 - reported with what was measured so far
            result.error = abort_notice("storm aborted", exc, bench.edge, "edge")
        finally:
            await bench.stop()


# -- command line ---------------------------------------------------------------------------


def parse_plan(argv: Sequence[str] | None) -> Plan:
    """The plan the command line asks for; exits with a usage error for a bad one."""
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="connects/s offered (2000)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of storm (20)")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds a client stays (1)")
    parser.add_argument("--rounds", type=int, default=2, help="storms, one after another (2)")
    parser.add_argument("--users", type=int, default=10_000,
                        help="distinct users, used round robin (10000)")
    parser.add_argument("--group-size", type=int, default=100, help="users per group (100)")
    parser.add_argument("--drivers", type=int, default=2, help="storm driver processes (2)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds for a connect to get its welcome (10)")
    parser.add_argument("--ready-period", type=float, default=0.2,
                        help="seconds between /readyz polls (0.2)")
    parser.add_argument("--slow", type=float, default=1.0,
                        help="a /readyz answer slower than this is slow (1: the kubelet's timeout)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds after the gauge is 0 before memory is read (5)")
    add_edge_settings(parser, "a WARREN_* variable for the edge, e.g. WARREN_EDGE_BIND_CHANNELS=1")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_local(parser, args)
    settings = edge_settings(parser, args)
    if args.rate <= 0 or args.duration <= 0 or args.rounds < 1 or args.drivers < 1:
        parser.error("--rate, --duration, --rounds and --drivers must be positive")
    if args.users < args.drivers:
        parser.error("--users must be at least --drivers")
    return Plan(
        rate=args.rate, duration_s=args.duration, hold_s=args.hold, rounds=args.rounds,
        users=args.users, group_size=args.group_size, drivers=args.drivers,
        timeout_s=args.timeout, ready_period_s=args.ready_period, slow_s=args.slow,
        settle_s=args.settle, markdown=args.markdown, logs=args.logs,
        amqp_url=args.amqp_url, api_url=args.api_url, edge_settings=settings,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The storm, or with ``--worker`` one of its drivers."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if worker_mode(arguments, "python -m bench.storm --worker", "a storm driver", worker_main):
        return
    plan = parse_plan(arguments)
    print(f"storm: {plan.rate:,.0f} connects/s for {plan.duration_s:g} s, hold {plan.hold_s:g} s, "
          f"{plan.rounds} round(s), {plan.users:,} users, {plan.drivers} drivers; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    result = Result()
    budget = plan.rounds * (plan.duration_s + plan.timeout_s + SETTLE_TIMEOUT_S + 180) + 300
    run_within(storm(plan, result), budget, "storm")
    print_report(result, plan.rate, plan.slow_s, plan.markdown)


if __name__ == "__main__":
    main()
