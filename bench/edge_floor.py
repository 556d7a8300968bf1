"""The edge at the floor (issue 19): each of Warren's figures beside its reference, in
the same run, over alternated rounds.

``python -m bench.edge_floor MODE [--rounds 3] [--quick] [--markdown] [--edge-root DIR]``

Modes (bench/README.md, *The edge at the floor*):

* ``direct``: publish-to-receive latency of direct messages (one event to one user) at
  1,000 and 2,000 msg/s, Warren (its keepalive on, default interval) against the bare
  edge B (:mod:`bench.bare_edge`), each holding ``--sockets`` connections of which
  ``--targets`` get the messages and the rest sit idle;
* ``idle``: CPU of Warren, python-socketio (A, :mod:`bench.peer_server`) and B, each
  holding ``--sockets`` idle connections, measured together over ``--rounds`` windows;
* ``drain``: the consumer paused (SIGSTOP) while ``--events`` single-recipient events
  fill its queue, then resumed and timed until its clients have them all: Warren, B, and
  an aio-pika consumer that only acks (:mod:`bench.ack_floor`, started late instead);
* ``publish``: ``Publisher.publish_event`` against bare aio-pika with publisher confirms,
  at 1, 100 and 1,000 in flight, the same messages to the same exchange;
* ``connect``: ``--connects`` clients connecting 50 at a time to Warren with
  ``WARREN_EDGE_CHECK_USERS`` on (its users in its database), to A and to B.

Every system of a mode is started once, on one vhost, with clients of its own (its own
users, so that no system receives another's events) and its own driver process
(:mod:`bench.driver`); the rounds then take the systems in turn, forwards then backwards.
Each round prints its figures with the load average, steal and the host CPU outside the
bench's processes; then the medians side by side, Warren's ratio to its reference, and
issue 19's goals as PASS/FAIL (information only: nothing asserts them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import aio_pika
import orjson
import psutil
import uvloop
from argon2 import PasswordHasher

from bench.bare_edge import READY as BARE_READY
from bench.cli import add_common_arguments, add_edge_settings, check_local, edge_settings
from bench.edge_floor_report import (
    GOAL_HEADERS,
    WARREN,
    Goal,
    Metric,
    RoundResult,
    alternating,
    goal_line,
    noise_summary,
    round_cells,
    round_headers,
    summary_headers,
    summary_lines,
)
from bench.edge_metrics import edge_gauges
from bench.loadclients import DriverPool, slices
from bench.meter import Meter, cpu_seconds
from bench.publisher import EVENT_TYPE, SENDER
from bench.report import format_table
from bench.rpc import REPO_ROOT, Worker
from bench.servers import ServerProcess, clean_env, edge_process, peer_process
from bench.stats import Histogram
from bench.traffic import make_clients
from bench.workspace import Workspace, workspace
from shared.config import HistorySettings
from shared.db import UserStore, create_schema, make_engine, session_factory
from shared.messaging import Address, Envelope, encode
from shared.messaging.broker import BrokerUnavailable, Publisher, connect, declare_exchanges
from shared.messaging.names import EVENTS_EXCHANGE, HISTORY_EXCHANGE
from shared.messaging.producer import CONTENT_TYPE, MessageKind

BARE: Final = "bare"
PEER: Final = "peer"
FLOOR: Final = "floor"
AIO_PIKA: Final = "aio-pika"
MODES: Final = ("direct", "idle", "drain", "publish", "connect")
GROUP_SIZE: Final = 100
CONCURRENCY: Final = 50  # clients connecting at once per driver, as in bench.fanout
CALL_TIMEOUT_S: Final = 60.0
LIFETIME: Final = ["--lifetime", "3600"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    rounds: int
    quick: bool
    sockets: int  # connections per system (direct, idle, drain)
    targets: int  # direct: users that get the messages
    rates: tuple[int, ...]  # direct: msg/s
    step_s: float  # direct: seconds of publishing per rate
    window_s: float  # idle: seconds per measured window
    events: int  # drain: events per fill
    in_flight: tuple[int, ...]  # publish
    messages: int  # publish: messages per round at 100 in flight or more
    connects: int  # connect: clients per round
    markdown: bool
    logs: Path | None
    edge_root: Path
    edge_settings: dict[str, str]
    amqp_url: str
    api_url: str


# -- the systems --------------------------------------------------------------------


@dataclass(slots=True)
class Side:
    """One system under test for the whole run: its server, its clients and their driver."""

    name: str
    server: ServerProcess
    dialect: str  # the drivers' client dialect: warren or engineio
    clients: list[dict[str, Any]]
    clients_file: Path
    drivers: DriverPool
    connected: int = 0

    @property
    def users(self) -> list[str]:
        return [str(c["user"]) for c in self.clients]

    async def start(self) -> None:
        await self.server.start()
        await self.drivers.start()

    async def connect(self, first: int, last: int) -> dict[str, Any]:
        """Connect clients ``first..last-1``, ``CONCURRENCY`` at a time; their counts and time."""
        replies = await self.drivers.call_each(
            "connect", CALL_TIMEOUT_S * 10,
            [{"first": first + a, "last": first + b}
             for a, b in slices(last - first, len(self.drivers))],
            dialect=self.dialect, port=self.server.port, clients_file=str(self.clients_file),
            concurrency=CONCURRENCY, timeout_s=20.0,
        )
        connected = sum(int(r["connected"]) for r in replies)
        failed = sum(int(r["failed"]) for r in replies)
        self.connected += connected
        if failed:
            errors = [e for r in replies for e in r["errors"]]
            print(f"  {self.name}: {failed} clients failed to connect: {errors[:3]}", flush=True)
        return {"connected": connected, "failed": failed}

    async def disconnect(self) -> None:
        await self.drivers.call_all("disconnect", CALL_TIMEOUT_S, timeout_s=20.0)
        self.connected = 0

    async def collect(self, step: int, expected: int, deadline_s: float,
                      stall_s: float) -> tuple[int, float, Histogram]:
        """The deliveries of ``step`` (all on this side's first driver, which holds every
        target): how many, the wall time of the last, and their latencies."""
        reply = await self.drivers.workers[0].call(
            "collect", deadline_s + CALL_TIMEOUT_S, step=step, expected=expected,
            deadline_s=deadline_s, stall_s=stall_s,
        )
        histogram = Histogram()
        histogram.merge_sparse(reply["histogram"])
        return int(reply["received"]), float(reply["last"]), histogram

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.connected:
                await self.disconnect()
        await self.drivers.stop()
        with contextlib.suppress(Exception):
            await self.server.stop()


def make_side(name: str, plan: Plan, space: Workspace, clients: list[dict[str, Any]],
              drivers: int = 1, settings: dict[str, str] | None = None) -> Side:
    logs = space.logs
    logs.mkdir(exist_ok=True)
    server: ServerProcess
    if name == WARREN:
        server = edge_process(
            space.amqp_url, f"sqlite:///{space.workdir / 'edge.db'}", logs / "edge.log",
            plan.edge_root, settings={**plan.edge_settings, **(settings or {})},
        )
    elif name == BARE:
        server = ServerProcess(
            BARE, [sys.executable, "-m", "bench.bare_edge", "--amqp-url", space.amqp_url],
            clean_env({}), BARE_READY, logs / "bare.log",
        )
    else:
        server = peer_process(space.amqp_url, logs / "peer.log")
    clients_file = space.workdir / f"{name}-clients.json"
    clients_file.write_bytes(orjson.dumps(clients))
    pool = DriverPool(f"{name}-driver", "bench.driver", LIFETIME, drivers, logs)
    return Side(name, server, "engineio" if name == PEER else "warren", clients, clients_file,
                pool)


def side_clients(name: str, count: int) -> list[dict[str, Any]]:
    """``count`` users of this system alone (``<name>00000``..), in groups of 100."""
    return make_clients(name[:1] + "user", count, max(1, -(-count // GROUP_SIZE)))


def store_users(database_url: str, clients: Sequence[dict[str, Any]]) -> None:
    """Rows for ``clients`` in the edge's users table, for its user check. The default
    Argon2 parameters cost ~160 ms a hash: these rows get a cheap, valid Argon2id hash
    (they sign in with tokens only), as in bench.fanout."""
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        store = UserStore(session_factory(engine), hasher=cheap.hash)
        for client in clients:
            store.add(str(client["user"]), "pw", tuple(client["groups"]))
    finally:
        engine.dispose()


# -- measuring --------------------------------------------------------------------------


class Host:
    """The host around each measurement: load, steal, and CPU outside the bench's processes
    and the broker (the other sessions)."""

    def __init__(self, pids: Sequence[int], amqp_url: str) -> None:
        # The meter counts this process apart (as ``orchestrator``); it finds the broker's
        # process once, here (a scan of the host's sockets).
        self._meter = Meter(pids[0], {"bench": [p for p in pids if p != os.getpid()]},
                            amqp_url)

    def read(self) -> dict[str, float]:
        return self._meter.read()

    def note(self, result: RoundResult, before: dict[str, float]) -> None:
        """Into ``result``: the load now, and steal and other CPU since ``before``."""
        after = self._meter.read()
        wall = max(after["wall"] - before["wall"], 1e-6)
        result.load = os.getloadavg()[0]
        result.steal_pct = 100 * (after["host_steal"] - before["host_steal"]) / wall
        shares = self._meter.shares(before, after)
        result.other_pct = shares["other"]
        result.values["mq_pct"] = shares["broker"]


class CpuClock:
    """CPU seconds of one process between two reads."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._start = cpu_seconds(self._process)

    def seconds(self) -> float:
        return cpu_seconds(self._process) - self._start


def bench_pids(sides: Sequence[Side], *more: int) -> list[int]:
    return [p for s in sides for p in (s.server.pid, *s.drivers.pids)] + list(more)


async def publisher_worker(space: Workspace, settings: dict[str, str]) -> Worker:
    worker = Worker("publisher", "bench.publisher", LIFETIME, space.logs / "publisher.log")
    await worker.start()
    await worker.call("open", CALL_TIMEOUT_S, system=WARREN, amqp_url=space.amqp_url,
                      settings=settings)
    return worker


async def direct(plan: Plan, space: Workspace, rounds: list[RoundResult]) -> None:
    """Latency of direct messages at each of ``plan.rates``, the systems alternating."""
    sides = [make_side(n, plan, space, side_clients(n, plan.sockets)) for n in (WARREN, BARE)]
    publisher: Worker | None = None
    steps = itertools.count(1)
    try:
        for side in sides:
            await side.start()
            started = time.perf_counter()
            await side.connect(0, plan.sockets)
            print(f"{side.name}: {side.connected} clients in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        publisher = await publisher_worker(space, plan.edge_settings)
        host = Host(bench_pids(sides, publisher.pid), space.amqp_url)

        async def step(side: Side, rate: int, duration_s: float) -> dict[str, float]:
            assert publisher is not None
            number = next(steps)
            clock = CpuClock(side.server.pid)
            published = await publisher.call(
                "run", duration_s * 1.1 + CALL_TIMEOUT_S, step=number, kind="direct",
                targets=side.users[:plan.targets], rate=float(rate), duration_s=duration_s,
                max_in_flight=512,
            )
            expected = sum(int(n) for n in published["counts"].values())
            received, _last, histogram = await side.collect(number, expected,
                                                            duration_s + 15.0, 1.5)
            cpu = clock.seconds()
            values = {f"pub_{rate}": int(published["sent"]) / float(published["window_s"]),
                      f"lost_{rate}": float(expected - received)}
            if received:
                values[f"cpu_{rate}"] = cpu / received * 1e6
                for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
                    values[f"{name}_{rate}"] = (histogram.percentile(q) or 0.0) * 1000
            return values

        for side in sides:  # routes, consumers and connections in place before measuring
            await step(side, 200, 1.0)
        for number, order in enumerate(alternating([s.name for s in sides], plan.rounds), 1):
            for side in sorted(sides, key=lambda s: order.index(s.name)):
                result = RoundResult(side.name, number)
                before = host.read()
                for rate in plan.rates:
                    result.values.update(await step(side, rate, plan.step_s))
                host.note(result, before)
                rounds.append(result)
                print("  " + "  ".join(round_cells(result, direct_metrics(plan))), flush=True)
    finally:
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.call("close", CALL_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await publisher.stop()
        for side in sides:
            await side.stop()


async def idle(plan: Plan, space: Workspace, rounds: list[RoundResult]) -> None:
    """CPU of each server holding ``plan.sockets`` idle connections, all measured together."""
    sides = [make_side(n, plan, space, side_clients(n, plan.sockets), drivers=2)
             for n in (WARREN, PEER, BARE)]
    try:
        rss_empty: dict[str, float] = {}
        for side in sides:
            await side.start()
            rss_empty[side.name] = psutil.Process(side.server.pid).memory_info().rss / 2**20
            started = time.perf_counter()
            await side.connect(0, plan.sockets)
            print(f"{side.name}: {side.connected} clients in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        host = Host(bench_pids(sides), space.amqp_url)
        # Warren's first heartbeats come at random within the first interval, so the
        # windows see the steady state: a beat per socket per interval, spread evenly.
        await asyncio.sleep(5.0)  # settling: a pause of the host's work, not a wait for an event
        for number in range(1, plan.rounds + 1):
            clocks = {s.name: CpuClock(s.server.pid) for s in sides}
            before = host.read()
            started = time.monotonic()
            await asyncio.sleep(plan.window_s)  # the measuring window itself
            wall = time.monotonic() - started
            for side in sides:
                rss = psutil.Process(side.server.pid).memory_info().rss / 2**20
                result = RoundResult(side.name, number, {
                    "cpu_pct": 100 * clocks[side.name].seconds() / wall,
                    "sockets": float(side.connected),
                    "kb_per_socket": (rss - rss_empty[side.name]) * 1024 / max(1, side.connected),
                })
                host.note(result, before)
                rounds.append(result)
                print("  " + "  ".join(round_cells(result, IDLE_METRICS)), flush=True)
    finally:
        for side in sides:
            await side.stop()


class Filler:
    """Fills a queue: ``count`` confirmed events round robin over users, through Warren's
    publisher, as fast as ``IN_FLIGHT`` unconfirmed publishes allow."""

    IN_FLIGHT: Final = 512

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def fill(self, step: int, users: Sequence[str], count: int) -> int:
        addresses = [Address.user(u) for u in users]
        sequence = iter(range(count))
        failed = 0

        async def lane() -> None:
            nonlocal failed
            for seq in sequence:
                envelope = Envelope(type=EVENT_TYPE, to=addresses[seq % len(addresses)],
                                    sender=SENDER, data={"step": step, "seq": seq})
                try:
                    await self._publisher.publish_event(envelope)
                except BrokerUnavailable:
                    failed += 1

        await asyncio.gather(*(lane() for _ in range(self.IN_FLIGHT)))
        return count - failed


async def drain(plan: Plan, space: Workspace, rounds: list[RoundResult]) -> None:
    """Each consumer paused while its queue fills, then timed until it has drained."""
    sides = [make_side(n, plan, space, side_clients(n, plan.sockets)) for n in (WARREN, BARE)]
    floor_users = [c["user"] for c in side_clients(FLOOR, plan.sockets)]
    floor = Worker(FLOOR, "bench.ack_floor", LIFETIME, space.logs / "floor.log")
    connection = await connect(space.amqp_url, name="warren-bench-filler")
    steps = itertools.count(1)
    try:
        filler = Filler(await Publisher.open(connection,
                                             HistorySettings.from_env(plan.edge_settings)))
        for side in sides:
            await side.start()
            await side.connect(0, plan.sockets)
            print(f"{side.name}: {side.connected} clients", flush=True)
        await floor.start()
        await floor.call("open", CALL_TIMEOUT_S * 5, amqp_url=space.amqp_url,
                         keys=[Address.user(u).routing_key for u in floor_users])
        host = Host(bench_pids(sides, floor.pid), space.amqp_url)

        async def paused(side: Side, result: RoundResult) -> None:
            number = next(steps)
            os.kill(side.server.pid, signal.SIGSTOP)
            try:
                filled = await filler.fill(number, side.users, plan.events)
                clock, before = CpuClock(side.server.pid), host.read()
                resumed = time.time()
            finally:
                os.kill(side.server.pid, signal.SIGCONT)
            received, last, _histogram = await side.collect(number, filled, 120.0, 5.0)
            record(result, filled, received, last - resumed, clock.seconds())
            host.note(result, before)

        async def late(result: RoundResult) -> None:
            filled = await filler.fill(next(steps), floor_users, plan.events)
            clock, before = CpuClock(floor.pid), host.read()
            resumed = time.time()
            reply = await floor.call("drain", 120.0 + CALL_TIMEOUT_S, count=filled,
                                     timeout_s=120.0)
            record(result, filled, int(reply["received"]), float(reply["last"]) - resumed,
                   clock.seconds())
            host.note(result, before)

        by_name = {s.name: s for s in sides}
        for number, order in enumerate(alternating([WARREN, BARE, FLOOR], plan.rounds), 1):
            for name in order:
                result = RoundResult(name, number)
                if name == FLOOR:
                    await late(result)
                else:
                    await paused(by_name[name], result)
                rounds.append(result)
                print("  " + "  ".join(round_cells(result, DRAIN_METRICS)), flush=True)
    finally:
        await connection.close()
        with contextlib.suppress(Exception):
            await floor.call("close", CALL_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await floor.stop()
        for side in sides:
            await side.stop()


def record(result: RoundResult, filled: int, received: int, seconds: float,
           cpu_s: float) -> None:
    """A drain's figures: rate, CPU per message, and what did not arrive."""
    seconds = max(seconds, 1e-6)
    result.values.update({
        "rate": received / seconds,
        "cpu_us": cpu_s / received * 1e6 if received else 0.0,
        "seconds": seconds,
        "lost": float(filled - received),
    })


async def publish(plan: Plan, space: Workspace, rounds: list[RoundResult]) -> None:
    """Warren's publisher against bare aio-pika, the same messages, each with confirms."""
    history = HistorySettings.from_env(plan.edge_settings)
    warren_connection = await connect(space.amqp_url, name="warren-bench-publish")
    bare_connection = await aio_pika.connect(space.amqp_url)
    try:
        publisher = await Publisher.open(warren_connection, history)
        channel = await bare_connection.channel(publisher_confirms=True)
        await declare_exchanges(channel)
        # The exchange Warren's publisher picks for this type: the kept events' one while
        # the history stream is on (docs/protocol.md 17.1).
        exchange = await channel.get_exchange(
            HISTORY_EXCHANGE if history.keeps(EVENT_TYPE) else EVENTS_EXCHANGE)
        users = [c["user"] for c in side_clients("publish", 1000)]  # nobody holds them

        def envelopes(count: int) -> list[Envelope]:
            return [Envelope(type=EVENT_TYPE, to=Address.user(users[i % len(users)]),
                             sender=SENDER, data={"step": 0, "seq": i}) for i in range(count)]

        async def warren_run(batch: list[Envelope], in_flight: int) -> None:
            await lanes(batch, in_flight, publisher.publish_event)

        async def bare_run(batch: list[Envelope], in_flight: int) -> None:
            messages = [(aio_pika.Message(
                encode(e), content_type=CONTENT_TYPE, message_id=e.id, correlation_id=e.id,
                type=e.type, delivery_mode=MessageKind.EVENT.delivery_mode,
            ), e.to.routing_key) for e in batch]

            async def one(item: tuple[aio_pika.Message, str]) -> None:
                await exchange.publish(item[0], routing_key=item[1], mandatory=False)

            await lanes(messages, in_flight, one)

        runs: dict[str, Callable[[list[Envelope], int], Awaitable[None]]] = {
            WARREN: warren_run, AIO_PIKA: bare_run}
        await warren_run(envelopes(500), 100)  # warm-up: channels, exchanges, caches
        await bare_run(envelopes(500), 100)
        host = Host([os.getpid()], space.amqp_url)
        for number, order in enumerate(alternating([WARREN, AIO_PIKA], plan.rounds), 1):
            for name in order:
                result = RoundResult(name, number)
                before = host.read()
                for in_flight in plan.in_flight:
                    count = plan.messages if in_flight >= 100 else plan.messages // 10
                    batch = envelopes(count)
                    cpu, started = time.process_time(), time.perf_counter()
                    await runs[name](batch, in_flight)
                    wall = time.perf_counter() - started
                    result.values[f"rate_{in_flight}"] = count / wall
                    result.values[f"cpu_{in_flight}"] = (time.process_time() - cpu) / count * 1e6
                host.note(result, before)
                rounds.append(result)
                print("  " + "  ".join(round_cells(result, publish_metrics(plan))), flush=True)
    finally:
        await bare_connection.close()
        await warren_connection.close()


async def lanes(items: Sequence[T], in_flight: int,
                send: Callable[[T], Awaitable[None]]) -> None:
    """Send every item, ``in_flight`` at a time: each lane sends its next item once the
    last one is confirmed."""
    sequence = iter(items)

    async def lane() -> None:
        for item in sequence:
            await send(item)

    await asyncio.gather(*(lane() for _ in range(min(in_flight, len(items)))))


async def connect_storm(plan: Plan, space: Workspace, rounds: list[RoundResult]) -> None:
    """``plan.connects`` clients connecting 50 at a time, then closing; the systems in turn."""
    warren_clients = side_clients(WARREN, plan.connects)
    await asyncio.to_thread(store_users, f"sqlite:///{space.workdir / 'edge.db'}", warren_clients)
    sides = [
        make_side(WARREN, plan, space, warren_clients,
                  settings={"WARREN_EDGE_CHECK_USERS": "1"}),
        make_side(PEER, plan, space, side_clients(PEER, plan.connects)),
        make_side(BARE, plan, space, side_clients(BARE, plan.connects)),
    ]
    try:
        for side in sides:
            await side.start()
        host = Host(bench_pids(sides), space.amqp_url)
        for side in sides:  # warm-up: what a first connection sets up once
            await side.connect(0, min(100, plan.connects))
            await side.disconnect()
            await settled(side)
        for number, order in enumerate(alternating([s.name for s in sides], plan.rounds), 1):
            for side in sorted(sides, key=lambda s: order.index(s.name)):
                result = RoundResult(side.name, number)
                before, clock = host.read(), CpuClock(side.server.pid)
                started = time.perf_counter()
                counts = await side.connect(0, plan.connects)
                seconds = time.perf_counter() - started
                connect_cpu = clock.seconds()
                host.note(result, before)
                await side.disconnect()
                await settled(side)
                close_cpu = clock.seconds() - connect_cpu
                welcomed = max(1, counts["connected"])
                result.values.update({
                    "seconds": seconds, "per_s": counts["connected"] / seconds,
                    "cpu_ms": connect_cpu / welcomed * 1000,
                    "close_ms": close_cpu / welcomed * 1000,
                    "failed": float(counts["failed"]),
                })
                rounds.append(result)
                print("  " + "  ".join(round_cells(result, CONNECT_METRICS)), flush=True)
    finally:
        for side in sides:
            await side.stop()


async def settled(side: Side, timeout_s: float = 60.0) -> None:
    """Warren: wait (bounded) until its connection gauge is back to 0 and so every close
    was handled; the others have no gauge, their drivers saw every connection end."""
    if side.name != WARREN:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if (await edge_gauges(side.server.port)).connections == 0:
            return
        await asyncio.sleep(0.2)  # polling the gauge, bounded by the deadline


# -- what each mode prints -----------------------------------------------------------


def direct_metrics(plan: Plan) -> list[Metric]:
    return [*(m for rate in plan.rates for m in (
        Metric(f"pub_{rate}", f"pub msg/s {rate}/s", 0),
        Metric(f"p50_{rate}", f"p50 ms {rate}/s", 2), Metric(f"p99_{rate}", f"p99 ms {rate}/s", 2),
        Metric(f"max_{rate}", f"max ms {rate}/s", 1), Metric(f"cpu_{rate}", f"µs/msg {rate}/s", 0),
        Metric(f"lost_{rate}", f"lost {rate}/s", 0),
    )), MQ_METRIC]


MQ_METRIC: Final = Metric("mq_pct", "mq CPU%", 0)  # RabbitMQ's, over the round
IDLE_METRICS: Final = [Metric("cpu_pct", "CPU % of a core", 2), Metric("sockets", "sockets", 0),
                       Metric("kb_per_socket", "KB per socket", 1), MQ_METRIC]
DRAIN_METRICS: Final = [Metric("rate", "msg/s", 0), Metric("cpu_us", "CPU µs/msg", 1),
                        Metric("seconds", "drain s", 2), Metric("lost", "lost", 0), MQ_METRIC]
CONNECT_METRICS: Final = [Metric("seconds", "all welcomed s", 2),
                          Metric("per_s", "welcomed/s", 0),
                          Metric("cpu_ms", "CPU ms/connect", 2),
                          Metric("close_ms", "CPU ms/close", 2), Metric("failed", "failed", 0),
                          MQ_METRIC]


def publish_metrics(plan: Plan) -> list[Metric]:
    return [*(m for n in plan.in_flight for m in (
        Metric(f"rate_{n}", f"msg/s at {n}", 0), Metric(f"cpu_{n}", f"CPU µs/msg at {n}", 1))),
        MQ_METRIC]


@dataclass(frozen=True, slots=True)
class Report:
    systems: list[str]
    references: list[str]
    metrics: list[Metric]
    goals: list[Goal] = field(default_factory=list)


def report_for(plan: Plan) -> Report:
    if plan.mode == "direct":
        low, high = plan.rates[0], plan.rates[-1]
        return Report([WARREN, BARE], [BARE], direct_metrics(plan), [
            Goal(f"Warren max latency at {low}/s <= 1.5x B's", f"max_{low}", 1.5, True, BARE),
            Goal(f"Warren p99 at {high}/s <= 1.25x B's", f"p99_{high}", 1.25, True, BARE),
        ])
    if plan.mode == "idle":
        return Report([WARREN, PEER, BARE], [PEER], IDLE_METRICS, [
            Goal(f"Warren idle CPU at {plan.sockets:,} sockets < 1 % of a core",
                 "cpu_pct", 1.0, True),
        ])
    if plan.mode == "drain":
        return Report([WARREN, BARE, FLOOR], [BARE, FLOOR], DRAIN_METRICS, [
            Goal("Warren drain rate >= 1.0x B's", "rate", 1.0, False, BARE),
        ])
    if plan.mode == "publish":
        return Report([WARREN, AIO_PIKA], [AIO_PIKA], publish_metrics(plan), [
            Goal("publish_event >= 0.95x bare aio-pika at 100 in flight", "rate_100", 0.95,
                 False, AIO_PIKA),
        ])
    return Report([WARREN, PEER, BARE], [PEER, BARE], CONNECT_METRICS, [
        Goal("Warren (user check on) welcomed/s >= 1.0x python-socketio's", "per_s", 1.0,
             False, PEER),
    ])


def print_report(plan: Plan, rounds: Sequence[RoundResult]) -> None:
    report = report_for(plan)
    print()
    print(format_table(round_headers(report.metrics),
                       [round_cells(r, report.metrics) for r in rounds], plan.markdown))
    print()
    print(format_table(summary_headers(report.systems, report.references),
                       summary_lines(rounds, report.systems, report.metrics, report.references),
                       plan.markdown))
    print()
    print(format_table(GOAL_HEADERS, [goal_line(g, rounds) for g in report.goals], plan.markdown))
    print(f"\n{noise_summary(rounds)}")
    for line in short_steps(plan, rounds):
        print(line)


def short_steps(plan: Plan, rounds: Sequence[RoundResult]) -> list[str]:
    """``direct``: the steps whose publisher fell short of the rate (under 95 %): their
    latencies are the publisher's and the broker's backlog more than the edge's."""
    if plan.mode != "direct":
        return []
    short = [f"{r.system} round {r.round} at {rate}/s: {r.values[f'pub_{rate}']:.0f}"
             for r in rounds for rate in plan.rates
             if r.values.get(f"pub_{rate}", rate) < 0.95 * rate]
    if not short:
        return []
    return [f"warning: the publisher fell short of the rate in {len(short)} step(s) "
            f"({'; '.join(short)} msg/s): a busy host; those latencies are a backlog"]


RUNS: Final = {"direct": direct, "idle": idle, "drain": drain, "publish": publish,
               "connect": connect_storm}


async def run(plan: Plan, rounds: list[RoundResult]) -> None:
    async with workspace(plan.amqp_url, plan.api_url, "warren-edge-floor-", plan.logs) as space:
        print(f"vhost {space.vhost}", flush=True)
        await RUNS[plan.mode](plan, space, rounds)


# -- command line --------------------------------------------------------------------


def parse_plan(argv: Sequence[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated rounds, each system once per round (3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter steps")
    parser.add_argument("--sockets", type=int,
                        help="connections per system: direct 3000, idle 10000, drain 1000 "
                             "(--quick: 1000, 2000, 200)")
    parser.add_argument("--targets", type=int, default=500,
                        help="direct: users that get the messages (500)")
    parser.add_argument("--step", type=float, help="direct: seconds per rate (8; --quick: 3)")
    parser.add_argument("--window", type=float, help="idle: seconds per window (30; --quick: 5)")
    parser.add_argument("--events", type=int,
                        help="drain: events per fill (40000; --quick: 10000)")
    parser.add_argument("--messages", type=int,
                        help="publish: messages per round at 100 and 1000 in flight, a tenth "
                             "at 1 (20000; --quick: 5000)")
    parser.add_argument("--connects", type=int,
                        help="connect: clients per round (5000; --quick: 1000)")
    parser.add_argument("--edge-root", type=Path, default=REPO_ROOT,
                        help="run the edge from this checkout (to compare a change; default: here)")
    add_edge_settings(parser, "a WARREN_* variable for the edge (and the publisher)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_local(parser, args)
    quick = args.quick
    sockets = args.sockets or {"direct": 1000 if quick else 3000,
                               "idle": 2000 if quick else 10_000,
                               "drain": 200 if quick else 1000}.get(args.mode, 0)
    plan = Plan(
        mode=args.mode, rounds=args.rounds if args.rounds != 3 or not quick else 1, quick=quick,
        sockets=sockets, targets=min(args.targets, sockets) if sockets else args.targets,
        rates=(1000, 2000), step_s=args.step or (3.0 if quick else 8.0),
        window_s=args.window or (5.0 if quick else 30.0),
        events=args.events or (10_000 if quick else 40_000), in_flight=(1, 100, 1000),
        messages=args.messages or (5000 if quick else 20_000),
        connects=args.connects or (1000 if quick else 5000),
        markdown=args.markdown, logs=args.logs, edge_root=args.edge_root.resolve(),
        edge_settings=edge_settings(parser, args), amqp_url=args.amqp_url, api_url=args.api_url,
    )
    if plan.rounds < 1 or plan.targets < 1 or plan.events < 1 or plan.connects < 1:
        parser.error("--rounds, --targets, --events and --connects must be at least 1")
    return plan


def main(argv: Sequence[str] | None = None) -> None:
    plan = parse_plan(argv)
    print(f"edge floor: {plan.mode}, {plan.rounds} round(s); load {os.getloadavg()[0]:.1f}",
          flush=True)
    started = time.perf_counter()
    rounds: list[RoundResult] = []
    try:
        uvloop.run(asyncio.wait_for(run(plan, rounds), 1800.0))
    except TimeoutError:
        print("edge floor stopped: over its 1800 s budget", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - reported with the rounds measured so far
        print(f"edge floor aborted: {type(exc).__name__}: {exc}", file=sys.stderr)
    print_report(plan, rounds)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
