"""Fan-out benchmark: Warren's edge, and python-socketio 5 as a peer row.

``python -m bench.fanout [--clients N] [--quick] [--skip-peer] [--stream-ab ROUNDS]``

Processes (two cores: the servers under test get most of them):

* this orchestrator: sets up, asks the workers, measures, prints; idle during steps;
* the server under test: ``python -m services.ws_edge`` or ``python -m bench.peer_server``;
* client driver(s) ``python -m bench.driver`` (uvloop): the WebSocket clients;
* one publisher ``python -m bench.publisher`` (uvloop): paced publishes through
  RabbitMQ, with the edge's history settings.

Each scenario (direct, group, broadcast) climbs a ladder of offered delivery rates
and stops at the first step that saturates. With ``--stream-ab ROUNDS`` the edge runs
instead with the history stream on and off (``WARREN_HISTORY``, given to the edge and
the publisher), alternating within the run, and the medians are compared
(:mod:`bench.fanout_ab`). See bench/README.md for the columns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from argon2 import PasswordHasher

from bench.cli import abort_notice, add_common_arguments, check_local, run_within
from bench.edge_metrics import EdgeGauges, edge_gauges
from bench.fanout_ab import ab_configs, floor_rounds, print_ab_report
from bench.loadclients import slices
from bench.meter import Meter
from bench.report import (
    MEMORY_HEADERS,
    RATIO_HEADERS,
    ROW_HEADERS,
    TARGET_HEADERS,
    Row,
    SystemResult,
    format_table,
    memory_lines,
    noise_lines,
    ratio_lines,
    row_cells,
    saturation_note,
    target_lines,
)
from bench.rpc import REPO_ROOT, Worker
from bench.servers import ServerProcess, edge_process, peer_process
from bench.stats import Histogram
from bench.stream_floor import PublishFloor
from bench.workspace import workspace
from shared.auth import AuthSettings, TokenService
from shared.db import UserStore, create_schema, make_engine, session_factory
from shared.messaging import BROADCAST, Address

GROUP_SIZE = 100
CONNECT_CONCURRENCY = 50
CALL_TIMEOUT_S = 60.0
SETTLE_S = 60.0  # longest wait for a saturated step's backlog to drain


@dataclass(frozen=True, slots=True)
class Config:
    """One system as it is run: ``kind`` is ``warren`` or ``peer``; ``label`` names its
    rows; ``settings`` are WARREN_* variables given to the edge and the publisher."""

    label: str
    kind: str
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    clients: int
    drivers: int
    step_s: float
    drain_s: float
    stall_s: float
    fanout_ladder: tuple[int, ...]  # deliveries/s, for group and broadcast
    direct_ladder: tuple[int, ...]  # deliveries/s = messages/s
    scenarios: tuple[str, ...]
    peer: bool
    markdown: bool
    logs: Path | None
    edge_root: Path
    amqp_url: str
    api_url: str
    max_in_flight: int
    budget_s: float
    stream_ab: int  # rounds of the history stream on and off; 0: the usual run

    def configs(self) -> list[Config]:
        if self.stream_ab:
            return [Config(label, "warren", settings)
                    for label, settings in ab_configs(self.stream_ab)]
        warren = [Config("warren", "warren")]
        return warren + [Config("peer", "peer")] if self.peer else warren


@dataclass(frozen=True, slots=True)
class BenchUser:
    id: str
    groups: tuple[str, ...]
    token: str


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: str  # direct, group or broadcast
    targets: tuple[str, ...]  # user ids or group names; empty for broadcast
    fanout: float  # recipients per message, on average
    ladder: tuple[int, ...]  # offered deliveries/s, step by step


# -- set-up -------------------------------------------------------------------------


def group_count(clients: int) -> int:
    return max(1, round(clients / GROUP_SIZE))


def make_users(clients: int, database_url: str) -> list[BenchUser]:
    """Users ``bench0000..`` in groups ``benchg00..`` of about 100, with tokens.

    The default Argon2 parameters cost ~160 ms a hash (minutes for 1000 users), so
    these users get a cheap but valid Argon2id hash; they log in with tokens only.
    """
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        store = UserStore(session_factory(engine), hasher=cheap.hash)
        tokens = TokenService(AuthSettings.from_env({"WARREN_ENV": "development"}, development=True))
        groups = group_count(clients)
        users = []
        for i in range(clients):
            record = store.add(f"bench{i:04d}", f"pw-{i}", (f"benchg{i % groups:02d}",))
            token = tokens.issue(record.id, record.groups, record.roles, ttl_s=3600)
            users.append(BenchUser(record.id, record.groups, token))
        return users
    finally:
        engine.dispose()


def scenarios(plan: Plan, users: Sequence[BenchUser]) -> list[Scenario]:
    groups = tuple(sorted({g for u in users for g in u.groups}))
    every = [
        Scenario("direct", tuple(u.id for u in users), 1, plan.direct_ladder),
        Scenario("group", groups, len(users) / len(groups), plan.fanout_ladder),
        Scenario("broadcast", (), len(users), plan.fanout_ladder),
    ]
    return [s for s in every if s.kind in plan.scenarios]


def recipients(users: Sequence[BenchUser]) -> Counter[str]:
    """How many of ``users`` receive a message to each address (as ``str(Address)``)."""
    counts: Counter[str] = Counter()
    for user in users:
        counts[str(Address.user(user.id))] += 1
        for group in user.groups:
            counts[str(Address.group(group))] += 1
        counts[BROADCAST] += 1
    return counts


# -- measuring ------------------------------------------------------------------------


class SystemBench:
    """One system under test with its drivers and publisher, from start to stop."""

    def __init__(self, config: Config, plan: Plan, users: Sequence[BenchUser], workdir: Path,
                 amqp_url: str, steps: Iterator[int]) -> None:
        self.system = system = config.label
        self.kind = config.kind
        self.settings = dict(config.settings)
        self.plan = plan
        self.users = users
        self.workdir = workdir
        self.amqp_url = amqp_url
        self.steps = steps
        self.shares = [users[a:b] for a, b in slices(len(users), plan.drivers)]
        self.recipients = [recipients(share) for share in self.shares]
        logs = workdir / "logs"
        logs.mkdir(exist_ok=True)
        name = system.replace(" ", "-")
        self.server: ServerProcess = (
            edge_process(
                amqp_url, f"sqlite:///{workdir / 'bench.db'}", logs / f"edge-{name}.log",
                plan.edge_root, settings=self.settings,
            )
            if self.kind == "warren"
            else peer_process(amqp_url, logs / "peer.log")
        )
        self.drivers = [
            Worker(f"{name}-driver{i}", "bench.driver", [], logs / f"{name}-driver{i}.log")
            for i in range(plan.drivers)
        ]
        self.publisher = Worker(
            f"{name}-publisher", "bench.publisher", [], logs / f"{name}-publisher.log"
        )
        self.meter: Meter | None = None

    async def start(self) -> None:
        await self.server.start()
        await asyncio.gather(*(w.start() for w in (*self.drivers, self.publisher)))
        await self.publisher.call("open", CALL_TIMEOUT_S, system=self.kind,
                                  amqp_url=self.amqp_url, settings=self.settings)
        self.meter = Meter(
            self.server.pid,
            {"server": [self.server.pid], "drivers": [d.pid for d in self.drivers],
             "publisher": [self.publisher.pid]},
            self.amqp_url,
        )

    async def connect(self, clients_file: Path) -> int:
        dialect = "warren" if self.kind == "warren" else "engineio"
        first_last = slices(len(self.users), len(self.drivers))
        replies = await asyncio.gather(*(
            driver.call(
                "connect", CALL_TIMEOUT_S * 2, dialect=dialect, port=self.server.port,
                clients_file=str(clients_file), first=first, last=last,
                concurrency=CONNECT_CONCURRENCY, timeout_s=20.0,
            )
            for driver, (first, last) in zip(self.drivers, first_last)
        ))
        for reply in replies:
            if reply["failed"]:
                print(f"  {self.system}: {reply['failed']} clients failed: {reply['errors']}")
        return sum(int(r["connected"]) for r in replies)

    async def warm_up(self) -> None:
        """One broadcast that every client must see: routes, consumers and the publisher's
        connection are all in place before anything is measured."""
        for _attempt in range(3):
            if await self.marker(deadline_s=5.0):
                return
        raise RuntimeError(f"{self.system}: warm-up broadcast did not reach every client")

    async def marker(self, deadline_s: float) -> bool:
        """Publish one broadcast and wait until every client has it. Queues are FIFO, so
        once it is in, any backlog of an earlier step has been delivered or dropped."""
        step = next(self.steps)
        published = await self.publisher.call(
            "run", CALL_TIMEOUT_S, step=step, kind="broadcast", targets=[], rate=1.0,
            duration_s=1.0, max_in_flight=1,
        )
        replies = await self._collect(step, published["counts"], deadline_s, stall_s=deadline_s)
        return sum(int(r["received"]) for r in replies) >= sum(int(r["expected"]) for r in replies)

    async def step(self, scenario: Scenario, target_dps: int) -> Row:
        assert self.meter is not None
        plan = self.plan
        step = next(self.steps)
        rate = target_dps / scenario.fanout
        own_before = await self._own_latency()
        before = self.meter.read()
        published = await self.publisher.call(
            "run", plan.step_s * 1.1 + CALL_TIMEOUT_S, step=step, kind=scenario.kind,
            targets=list(scenario.targets), rate=rate, duration_s=plan.step_s,
            max_in_flight=plan.max_in_flight,
        )
        collected = await self._collect(
            step, published["counts"], plan.step_s + plan.drain_s, plan.stall_s
        )
        after = self.meter.read()
        row = self._row(scenario, target_dps, published, collected, before, after)
        own_after = await self._own_latency()
        if own_after is not None:
            p99 = own_after.latency_since(own_before, 0.99)
            row.server_p99_ms = None if p99 is None else p99 * 1000
        row.note = saturation_note(row, rate)
        return row

    async def _own_latency(self) -> EdgeGauges | None:
        """The edge's /metrics (its delivery latency histogram); None for the peer."""
        return await edge_gauges(self.server.port) if self.kind == "warren" else None

    async def _collect(
        self, step: int, counts: dict[str, int], deadline_s: float, stall_s: float
    ) -> list[dict[str, Any]]:
        """Each driver's deliveries of ``step``, with what it should have had as ``expected``,
        given how many messages went to each address."""
        expected = [sum(n * share[address] for address, n in counts.items())
                    for share in self.recipients]
        replies = await asyncio.gather(*(
            driver.call(
                "collect", deadline_s + CALL_TIMEOUT_S, step=step, expected=want,
                deadline_s=deadline_s, stall_s=stall_s,
            )
            for driver, want in zip(self.drivers, expected)
        ))
        for reply, want in zip(replies, expected):
            reply["expected"] = want
        return replies

    def _row(self, scenario: Scenario, target_dps: int, published: dict[str, Any],
             collected: list[dict[str, Any]], before: dict[str, float],
             after: dict[str, float]) -> Row:
        assert self.meter is not None
        histogram = Histogram()
        for reply in collected:
            histogram.merge_sparse(reply["histogram"])
        expected = sum(int(r["expected"]) for r in collected)
        received = sum(int(r["received"]) for r in collected)
        window_s = max(float(published["window_s"]), 1e-6)
        last = max((float(r["last"]) for r in collected if r["received"]), default=0.0)
        span_s = max(window_s, last - float(published["started"]))
        wall = after["wall"] - before["wall"]
        server_cpu = after["server"] - before["server"]
        busy = after["host_busy"] - before["host_busy"]
        broker_cpu = after["broker"] - before["broker"] if "broker" in after else 0.0
        known = broker_cpu + sum(
            after[k] - before[k] for k in ("server", "drivers", "publisher", "orchestrator")
        )
        p50, p99 = histogram.percentile(0.50), histogram.percentile(0.99)
        return Row(
            system=self.system,
            scenario=scenario.kind,
            fanout=round(scenario.fanout, 1),
            target_dps=target_dps,
            pub_mps=int(published["sent"]) / window_s,
            offered_dps=expected / window_s,
            achieved_dps=received / span_s if received else 0.0,
            p50_ms=None if p50 is None else p50 * 1000,
            p99_ms=None if p99 is None else p99 * 1000,
            expected=expected,
            received=received,
            server_us_per_delivery=server_cpu / received * 1e6 if received else None,
            server_cpu_pct=100 * server_cpu / wall,
            driver_cpu_pct=100 * (after["drivers"] - before["drivers"]) / wall,
            publisher_cpu_pct=100 * (after["publisher"] - before["publisher"]) / wall,
            broker_cpu_pct=100 * broker_cpu / wall,
            softirq_pct=100 * (after["host_softirq"] - before["host_softirq"]) / wall,
            other_cpu_pct=100 * (busy - known) / wall,
            steal_pct=100 * (after["host_steal"] - before["host_steal"]) / wall,
            server_rss_mb=self.meter.rss_mb(),
            broker_restarted="broker" in before and "broker" not in after,
        )

    async def stop(self) -> None:
        """Disconnect clients, stop workers, stop the server; each part even if one fails."""
        for driver in self.drivers:
            with contextlib.suppress(Exception):
                await driver.call("disconnect", CALL_TIMEOUT_S, timeout_s=10.0)
        with contextlib.suppress(Exception):
            await self.publisher.call("close", CALL_TIMEOUT_S)
        for worker in (*self.drivers, self.publisher):
            with contextlib.suppress(Exception):
                await worker.stop()
        await self.server.stop()


async def bench_system(result: SystemResult, config: Config, plan: Plan,
                       users: Sequence[BenchUser], workdir: Path, clients_file: Path,
                       amqp_url: str, steps: Iterator[int]) -> None:
    """Fill ``result`` step by step, so a run stopped half-way still reports what it has."""
    system = result.system
    bench = SystemBench(config, plan, users, workdir, amqp_url, steps)
    try:
        await bench.start()
        assert bench.meter is not None
        result.rss_empty_mb = bench.meter.rss_mb()
        result.connected = await bench.connect(clients_file)
        result.rss_idle_mb = bench.meter.rss_mb()
        print(f"{system}: {result.connected} clients connected, "
              f"{result.kb_per_idle or 0:.1f} KB per idle socket", flush=True)
        await bench.warm_up()
        for scenario in scenarios(plan, users):
            for target_dps in scenario.ladder:
                row = await bench.step(scenario, target_dps)
                result.rows.append(row)
                print("  " + " ".join(c for c in row_cells(row) if c), flush=True)
                if row.saturated:
                    break
            if not await bench.marker(deadline_s=SETTLE_S):
                print(f"  {system}: backlog not drained after {SETTLE_S:.0f} s", flush=True)
    except Exception as exc:  # noqa: BLE001 - reported; the next system still runs
        result.error = abort_notice(f"{system}: aborted", exc, bench.server, system)
    finally:
        await bench.stop()


# -- the run ----------------------------------------------------------------------------


async def run(plan: Plan, results: list[SystemResult], floors: list[PublishFloor]) -> None:
    """Bench each system in turn, appending to ``results`` as they finish; with
    ``--stream-ab``, then the broker's floor with and without the stream into ``floors``."""
    async with workspace(plan.amqp_url, plan.api_url, "warren-bench-", plan.logs) as space:
        workdir = space.workdir
        started = time.perf_counter()
        users = await asyncio.to_thread(
            make_users, plan.clients, f"sqlite:///{workdir / 'bench.db'}"
        )
        print(f"{len(users)} users in {group_count(len(users))} groups "
              f"({time.perf_counter() - started:.1f} s); vhost {space.vhost}", flush=True)
        clients_file = workdir / "clients.json"
        clients_file.write_bytes(orjson.dumps([{"user": u.id, "token": u.token} for u in users]))
        steps = itertools.count(1)
        for config in plan.configs():
            result = SystemResult(config.label, clients=len(users))
            results.append(result)
            await bench_system(
                result, config, plan, users, workdir, clients_file, space.amqp_url, steps
            )
        if plan.stream_ab:
            await floor_rounds(space.amqp_url, plan.stream_ab, floors)


def print_report(results: Sequence[SystemResult], markdown: bool) -> None:
    rows = [row_cells(r) for result in results for r in result.rows]
    print()
    print(format_table(ROW_HEADERS, rows, markdown))
    print()
    print(format_table(MEMORY_HEADERS, memory_lines(results), markdown))
    warren = next((r for r in results if r.system == "warren"), None)
    peer = next((r for r in results if r.system == "peer"), None)
    if warren is not None and peer is not None:
        print()
        print(format_table(RATIO_HEADERS, ratio_lines(warren, peer), markdown))
    if warren is not None:
        print()
        print(format_table(TARGET_HEADERS, target_lines(warren, peer), markdown))
    for line in noise_lines(results):
        print(line)
    for result in results:
        if result.error:
            print(f"\n{result.system} did not finish: {result.error}")


def print_report_for(plan: Plan, results: Sequence[SystemResult],
                     floors: Sequence[PublishFloor]) -> None:
    if plan.stream_ab:
        print_ab_report(results, floors, plan.markdown)
    else:
        print_report(results, plan.markdown)


def parse_plan(argv: Sequence[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, help="WebSocket clients (1000; --quick: 200)")
    parser.add_argument("--quick", action="store_true", help="fewer rates, shorter steps")
    parser.add_argument("--skip-peer", action="store_true", help="no python-socketio row")
    parser.add_argument("--drivers", type=int, default=1, help="client driver processes (1)")
    parser.add_argument("--step", type=float, help="seconds of publishing per step (4; quick: 2)")
    parser.add_argument("--scenarios",
                        help="which scenarios to run, comma-separated (all three; "
                             "--stream-ab: group,broadcast)")
    parser.add_argument("--edge-root", type=Path, default=REPO_ROOT,
                        help="run the edge from this checkout (to compare a change; default: here)")
    parser.add_argument("--stream-ab", type=int, default=0, metavar="ROUNDS",
                        help="ROUNDS of the edge with the history stream on and off, "
                             "alternating (no peer; scenarios group,broadcast unless given)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_local(parser, args)
    quick = args.quick
    clients = args.clients or (200 if quick else 1000)
    if clients < 1 or args.drivers < 1 or args.stream_ab < 0:
        parser.error("--clients and --drivers must be at least 1, --stream-ab at least 0")
    scenario_list = args.scenarios or (
        "group,broadcast" if args.stream_ab else "direct,group,broadcast")
    chosen = tuple(s.strip() for s in scenario_list.split(",") if s.strip())
    if not chosen or not set(chosen) <= {"direct", "group", "broadcast"}:
        parser.error("--scenarios takes direct, group and/or broadcast")
    return Plan(
        clients=clients,
        drivers=args.drivers,
        step_s=args.step or (2.0 if quick else 4.0),
        drain_s=6.0 if quick else 15.0,
        stall_s=1.5,
        fanout_ladder=(10_000, 50_000, 100_000) if quick
        else (10_000, 25_000, 50_000, 87_000, 120_000, 160_000, 200_000),
        direct_ladder=(1_000, 4_000) if quick else (1_000, 2_500, 5_000, 10_000, 20_000),
        scenarios=chosen,
        peer=not args.skip_peer and not args.stream_ab,
        markdown=args.markdown,
        logs=args.logs,
        edge_root=args.edge_root.resolve(),
        amqp_url=args.amqp_url,
        api_url=args.api_url,
        max_in_flight=512,
        budget_s=(170.0 if quick else 900.0) * max(1, args.stream_ab),
        stream_ab=args.stream_ab,
    )


def main(argv: Sequence[str] | None = None) -> None:
    plan = parse_plan(argv)
    ab = f", history stream on/off x {plan.stream_ab} rounds" if plan.stream_ab else ""
    print(f"fan-out bench: {plan.clients} clients, {plan.drivers} driver process(es), "
          f"{plan.step_s:g} s steps, peer {'on' if plan.peer else 'off'}{ab}", flush=True)
    started = time.perf_counter()
    results: list[SystemResult] = []
    floors: list[PublishFloor] = []
    run_within(run(plan, results, floors), plan.budget_s, "bench")
    print_report_for(plan, results, floors)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
