"""What a RabbitMQ node spends on Warren's edges: memory per connection, per exclusive
queue and per binding, the rate and CPU of binding churn, and CPU per routed message.

    python -m bench.broker_memory [--quick] [--cluster] [--markdown]
        [--connections 100] [--queues 2000] [--bindings 100000] [--parallel 4,32]
        [--churn 10000] [--messages 5000] [--fanout 20]

It runs on a node of its own, started fresh (``tests/support/private_broker.py``), so
that no other session's queues or traffic are counted; with ``--cluster``, on three such
nodes joined as production's are (``tests/support/cluster.py``), where every binding is
also held by every node. The shared broker is not touched. Each memory figure is a
difference of the node's own breakdown (``rabbitmqctl status``) read after a garbage
collection of every Erlang process, divided by the items added:

1. ``connections``: ``--connections`` AMQP connections with five channels each, as an
   edge holds (one consuming, ``WARREN_EDGE_BIND_CHANNELS`` = 4 binding);
2. ``exclusive queues``: ``--queues`` queues declared as an edge declares its own
   (exclusive, auto-delete, the edge's dead-letter arguments), spread over them;
3. ``bindings``: ``--bindings`` distinct user keys bound from ``warren.edges`` (declared
   by Warren's own code) to those queues, on as many channels at once as the largest
   ``--parallel``: a socket's user key, as the edge binds it.

Then, with all of that in place:

4. churn: for each ``--parallel`` value, ``--churn`` more keys bound and unbound again
   on that many channels at once (an edge binds on 4; many edges reconnecting at once
   bind on many more), timed, with the nodes' CPU per bind and per unbind;
5. routing: confirmed publishes of 230-byte bodies, 512 in flight, to a user key that
   one queue holds and to a key that ``--fanout`` queues of as many connections hold (a
   group's or ``broadcast``, held by that many edges), each queue consumed: the nodes'
   CPU per message and per queue it reaches; and ``bench/stream_floor.py``'s publish floor with
   and without the history stream, for what appending to the stream adds;
6. every binding removed, then every connection closed (the queues go with them),
   timed, and memory read again.

The nodes' CPU is their Erlang VMs' user and system time (psutil), summed over the
cluster's nodes, with each node's idle rate, measured first, taken off. Load average and
steal are printed with every timed row: compare only runs made on a quiet host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aio_pika
import aiormq
import psutil
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.common import FieldValue

from bench.meter import cpu_seconds
from bench.report import format_table
from bench.stream_floor import FLOOR_BODY, publish_floor
from shared.messaging.broker import (
    declare_edge_exchange,
    declare_exchanges,
    edge_queue_arguments,
)
from shared.messaging.names import (
    EDGE_EXCHANGE,
    EVENTS_EXCHANGE,
    edge_queue_name,
    group_key,
    user_key,
)
from tests.support.cluster import RabbitCluster
from tests.support.private_broker import PrivateBroker

CHANNELS_PER_CONNECTION: Final = 5  # an edge's consuming channel and its 4 binding channels
IN_FLIGHT: Final = 512  # unconfirmed publishes at a time, as bench/stream_floor.py
IDLE_S: Final = 3.0
BUDGET_S: Final = 1800.0
DELIVERY_TIMEOUT_S: Final = 120.0
# The breakdown's categories shown per item; the rest is in the total.
CATEGORIES: Final = ("mnesia", "other_ets", "queue_procs", "connections", "binary",
                     "metrics", "other_proc")
CONNECTION_CATEGORIES: Final = ("connection_readers", "connection_writers",
                                "connection_channels", "connection_other")
GC_ALL: Final = "[erlang:garbage_collect(P) || P <- erlang:processes()], ok."


@dataclass(frozen=True, slots=True)
class Sizes:
    connections: int
    queues: int
    bindings: int
    parallel: tuple[int, ...]
    churn: int
    messages: int
    fanout: int


FULL: Final = Sizes(connections=100, queues=2000, bindings=100_000, parallel=(4, 32),
                    churn=10_000, messages=5000, fanout=20)
QUICK: Final = Sizes(connections=20, queues=200, bindings=10_000, parallel=(4, 32),
                     churn=2000, messages=2000, fanout=10)


# -- the nodes ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    """One node's breakdown, in bytes: ``erlang`` is what the VM accounts for
    (``erlang:memory(total)``), ``rss`` the OS's view of the process."""

    erlang: int
    rss: int
    categories: dict[str, int]

    def category(self, name: str) -> int:
        if name == "connections":
            return sum(self.categories.get(c, 0) for c in CONNECTION_CATEGORIES)
        return self.categories.get(name, 0)


def read_memory(node: PrivateBroker) -> Memory:
    """The node's breakdown after every process has been garbage-collected, so that what
    is left is what the items hold, not garbage not yet collected."""
    node.ctl("eval", GC_ALL)
    status = json.loads(node.ctl("status", "--formatter", "json"))
    memory = status["memory"]
    total = memory["total"]
    categories = {k: int(v) for k, v in memory.items() if isinstance(v, int)}
    return Memory(erlang=int(total["erlang"]), rss=int(total["rss"]), categories=categories)


def vm_process(node: PrivateBroker) -> psutil.Process:
    """The node's Erlang VM, from the pid file it writes."""
    return psutil.Process(int((node.directory / "node.pid").read_text().strip()))


@dataclass
class Nodes:
    """The node or nodes under test, their VMs' CPU, and the host's load."""

    nodes: tuple[PrivateBroker, ...]
    vhost: str
    processes: tuple[psutil.Process, ...] = ()
    idle_cpu_per_s: float = 0.0  # summed over the nodes, measured before any load

    def __post_init__(self) -> None:
        self.processes = tuple(vm_process(n) for n in self.nodes)

    def url(self, index: int) -> str:
        """The vhost on the nodes in turn: connections spread as edges' would be."""
        return self.nodes[index % len(self.nodes)].vhost_url(self.vhost)

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.processes)

    def memory(self) -> list[Memory]:
        return [read_memory(n) for n in self.nodes]

    async def measure_idle(self) -> None:
        before, started = self.cpu(), time.monotonic()
        await asyncio.sleep(IDLE_S)
        self.idle_cpu_per_s = (self.cpu() - before) / (time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Host:
    """Load and steal over a timed step."""

    load: float
    steal_pct: float


class Timed:
    """Wall time, the nodes' CPU net of their idle rate, and the host's load over a step."""

    def __init__(self, nodes: Nodes) -> None:
        self._nodes = nodes

    def __enter__(self) -> Timed:
        self._cpu, self._steal = self._nodes.cpu(), _steal_seconds()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = max(time.monotonic() - self._wall, 1e-9)
        self.node_cpu_s = max(
            0.0, self._nodes.cpu() - self._cpu - self._nodes.idle_cpu_per_s * self.seconds)
        steal = _steal_seconds() - self._steal
        self.host = Host(load=os.getloadavg()[0],
                         steal_pct=100 * steal / (self.seconds * (psutil.cpu_count() or 1)))


def _steal_seconds() -> float:
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


@contextlib.contextmanager
def started_nodes(cluster: bool) -> Iterator[Nodes]:
    """A fresh node (or a three-node cluster) with a vhost of the bench's, removed after."""
    directory = Path(tempfile.mkdtemp(prefix="warren-bench-broker-"))
    try:
        if cluster:
            rabbits = RabbitCluster.start(directory)
            try:
                yield Nodes(rabbits.nodes, rabbits.create_vhost("warren-bench"))
            finally:
                rabbits.close()
        else:
            node = PrivateBroker.prepare(directory, plugins=())
            node.boot()
            try:
                yield Nodes((node,), node.create_vhost("warren-bench"))
            finally:
                node.crash()  # nothing in it is worth an orderly stop
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- the edges' side ----------------------------------------------------------


@dataclass
class EdgeLike:
    """One AMQP connection shaped as an edge's: a consuming channel, binding channels,
    and the exclusive queues declared on it."""

    connection: AbstractConnection
    channel: AbstractChannel
    binders: tuple[AbstractChannel, ...]
    queues: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, url: str) -> EdgeLike:
        connection = await aiormq.connect(url)
        channels = [await connection.channel() for _ in range(CHANNELS_PER_CONNECTION)]
        return cls(connection, channels[0], tuple(channels[1:]))

    async def declare(self, name: str) -> None:
        arguments: dict[str, FieldValue] = {**edge_queue_arguments()}
        await self.channel.queue_declare(
            name, exclusive=True, auto_delete=True, arguments=arguments)
        self.queues.append(name)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.close()


@dataclass(frozen=True, slots=True)
class Binding:
    channel: AbstractChannel
    queue: str
    key: str


def plan(edges: Sequence[EdgeLike], names: Iterable[str], parallel: int) -> list[list[Binding]]:
    """Spread the keys ``names`` over ``parallel`` lanes, each one channel of one
    connection, bound to that connection's queues in turn (an exclusive queue is bound
    only by its owner)."""
    lanes = [(edge, edge.binders[binder]) for binder in range(CHANNELS_PER_CONNECTION - 1)
             for edge in edges][:parallel]
    if len(lanes) < parallel:
        raise ValueError(f"--parallel {parallel} needs at least "
                         f"{-(-parallel // (CHANNELS_PER_CONNECTION - 1))} connections")
    planned: list[list[Binding]] = [[] for _ in lanes]
    turns = [itertools.cycle(edge.queues) for edge, _ in lanes]
    for index, key in enumerate(names):
        lane = index % len(lanes)
        planned[lane].append(Binding(lanes[lane][1], next(turns[lane]), key))
    return planned


async def run_lanes(lanes: Sequence[Sequence[Binding]],
                    step: Callable[[Binding], Awaitable[object]]) -> None:
    """Each lane's operations one after another (AMQP's queue.bind is synchronous on a
    channel), the lanes at once."""
    async def lane(bindings: Sequence[Binding]) -> None:
        for binding in bindings:
            await step(binding)

    await asyncio.gather(*(lane(b) for b in lanes))


async def bind(binding: Binding) -> None:
    await binding.channel.queue_bind(binding.queue, EDGE_EXCHANGE, routing_key=binding.key)


async def unbind(binding: Binding) -> None:
    await binding.channel.queue_unbind(binding.queue, EDGE_EXCHANGE, routing_key=binding.key)


def keys(prefix: str, count: int) -> list[str]:
    return [user_key(f"{prefix}{index:07d}") for index in range(count)]


# -- the phases ---------------------------------------------------------------


@dataclass
class Report:
    markdown: bool
    memory_rows: list[list[str]] = field(default_factory=list)
    churn_rows: list[list[str]] = field(default_factory=list)
    routing_rows: list[list[str]] = field(default_factory=list)

    def memory(self, what: str, count: int, nodes: Nodes, before: Sequence[Memory],
               after: Sequence[Memory]) -> None:
        for node, old, new in zip(nodes.nodes, before, after, strict=True):
            self.memory_rows.append([
                what, f"{count:,}", node.node.split("@")[0].rsplit("-", 1)[-1],
                f"{(new.erlang - old.erlang) / count:,.0f}",
                f"{(new.rss - old.rss) / count:,.0f}",
                *(f"{(new.category(c) - old.category(c)) / count:,.0f}" for c in CATEGORIES),
                f"{new.erlang / 2**20:,.1f}",
            ])

    def timed(self, rows: list[list[str]], cells: Sequence[str], timed: Timed) -> None:
        rows.append([*cells, f"{timed.host.load:.1f}", f"{timed.host.steal_pct:.0f}"])

    def print(self, nodes: Nodes) -> None:
        where = (f"{len(nodes.nodes)} nodes (cluster)" if len(nodes.nodes) > 1 else "one node")
        print(f"\nRabbitMQ {nodes.nodes[0].ctl('version').strip()}, {where}; "
              f"the nodes' idle CPU {100 * nodes.idle_cpu_per_s:.1f} % of a core "
              "(taken off every CPU figure)\n")
        gap = "\n" if self.markdown else ""  # a Markdown table after a blank line
        print(f"Memory per item (bytes; after a full garbage collection):\n{gap}", end="")
        print(format_table(["added", "count", "node", "erlang total", "rss", *CATEGORIES,
                            "node total MB"], self.memory_rows, self.markdown))
        print(f"\nBinding churn (one user key per operation, on top of what is bound):\n{gap}",
              end="")
        print(format_table(["channels at once", "ops", "binds/s", "unbinds/s",
                            "node CPU µs per bind", "per unbind", "load", "steal %"],
                           self.churn_rows, self.markdown))
        print(f"\nRouting (confirmed publishes, 230-byte bodies, every queue consumed):\n{gap}",
              end="")
        print(format_table(["case", "messages", "queues per message", "msg/s",
                            "node CPU µs per message", "per queue reached", "load",
                            "steal %"], self.routing_rows, self.markdown))


async def measure(nodes: Nodes, sizes: Sizes, report: Report) -> None:
    await nodes.measure_idle()
    setup = await aio_pika.connect(nodes.url(0))
    try:
        channel = await setup.channel()
        events, _commands = await declare_exchanges(channel)
        await declare_edge_exchange(channel, events)
    finally:
        await setup.close()

    edges: list[EdgeLike] = []
    try:
        before = nodes.memory()
        edges = list(await asyncio.gather(
            *(EdgeLike.open(nodes.url(i)) for i in range(sizes.connections))))
        after = nodes.memory()
        report.memory(f"connection ({CHANNELS_PER_CONNECTION} channels)", sizes.connections,
                      nodes, before, after)

        before = after
        for index in range(sizes.queues):
            await edges[index % len(edges)].declare(edge_queue_name(f"bench-{index:06d}"))
        after = nodes.memory()
        report.memory("exclusive queue", sizes.queues, nodes, before, after)

        before = after
        bound = plan(edges, keys("bench", sizes.bindings), max(sizes.parallel))
        with Timed(nodes) as timed:
            await run_lanes(bound, bind)
        after = nodes.memory()
        report.memory("binding (user key)", sizes.bindings, nodes, before, after)
        report.timed(report.churn_rows, [
            f"{max(sizes.parallel)} (the memory phase: binds only)", f"{sizes.bindings:,}",
            f"{sizes.bindings / timed.seconds:,.0f}", "-",
            f"{1e6 * timed.node_cpu_s / sizes.bindings:,.0f}", "-"], timed)

        for parallel in sizes.parallel:
            await churn(nodes, edges, sizes.churn, parallel, report)

        await routing(nodes, edges, sizes, report)

        before = nodes.memory()
        with Timed(nodes) as timed:
            await run_lanes(bound, unbind)
        after = nodes.memory()
        report.memory("binding removed", sizes.bindings, nodes, before, after)
        report.timed(report.churn_rows, [
            f"{max(sizes.parallel)} (every binding removed)", f"{sizes.bindings:,}", "-",
            f"{sizes.bindings / timed.seconds:,.0f}", "-",
            f"{1e6 * timed.node_cpu_s / sizes.bindings:,.0f}"], timed)

        before = after
        closing, edges = edges, []
        await asyncio.gather(*(edge.close() for edge in closing))
        after = nodes.memory()
        report.memory("connection and its queues closed", sizes.connections, nodes, before,
                      after)
    finally:
        await asyncio.gather(*(edge.close() for edge in edges))


async def churn(nodes: Nodes, edges: Sequence[EdgeLike], count: int, parallel: int,
                report: Report) -> None:
    """``count`` more keys bound, then unbound, ``parallel`` channels at once."""
    lanes = plan(edges, keys(f"churn{parallel}-", count), parallel)
    with Timed(nodes) as binding:
        await run_lanes(lanes, bind)
    with Timed(nodes) as unbinding:
        await run_lanes(lanes, unbind)
    report.timed(report.churn_rows, [
        str(parallel), f"{count:,}", f"{count / binding.seconds:,.0f}",
        f"{count / unbinding.seconds:,.0f}",
        f"{1e6 * binding.node_cpu_s / count:,.0f}",
        f"{1e6 * unbinding.node_cpu_s / count:,.0f}"], unbinding)


class Counter:
    """Deliveries to the consumed queues; ``done`` once the expected number has arrived."""

    def __init__(self) -> None:
        self.expect(0)

    def expect(self, count: int) -> None:
        self.expected, self.received = count, 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_message(self, _message: DeliveredMessage) -> None:
        self.received += 1
        if self.received >= self.expected and not self.done.done():
            self.done.set_result(None)


async def routing(nodes: Nodes, edges: Sequence[EdgeLike], sizes: Sizes,
                  report: Report) -> None:
    # A group's key is bound once on each edge that holds a member: one queue per
    # connection, the connections spread over the nodes.
    holders = [(edge, edge.queues[0]) for edge in edges[:sizes.fanout]]
    fanout_key = group_key("benchfanout")
    counter = Counter()
    for edge, queue in holders:
        await edge.channel.queue_bind(queue, EDGE_EXCHANGE, routing_key=fanout_key)
        # Consumed until the connection closes: the queues are auto-delete, as an edge's,
        # so cancelling the last consumer would delete them.
        await edge.channel.basic_consume(queue, counter.on_message, no_ack=True)
    # The first user key of the bindings phase is held by the first queue of the first
    # connection (plan()'s first lane).
    await routed(nodes, "user key: 1 queue", keys("bench", 1)[0], 1, counter,
                 sizes.messages, report)
    await routed(nodes, f"group key: {len(holders)} queues", fanout_key, len(holders),
                 counter, sizes.messages, report)
    for edge, queue in holders:
        await edge.channel.queue_unbind(queue, EDGE_EXCHANGE, routing_key=fanout_key)

    # The stream's share, through bench/stream_floor.py's publish floor (its own
    # exchanges and stream, in the same vhost).
    for kept in (False, True):
        with Timed(nodes) as timed:
            floor = await publish_floor(nodes.url(0), kept, sizes.messages)
        case = ("stream_floor: 1 queue and the history stream" if kept
                else "stream_floor: 1 queue, no stream")
        report.timed(report.routing_rows, [
            case, f"{floor.messages:,}", "1 + stream" if kept else "1",
            f"{floor.rate:,.0f}", f"{1e6 * timed.node_cpu_s / floor.messages:,.0f}", "-"],
            timed)


async def routed(nodes: Nodes, case: str, key: str, reached: int, counter: Counter,
                 messages: int, report: Report) -> None:
    """``messages`` confirmed publishes to ``key``, which ``reached`` consumed queues hold."""
    counter.expect(messages * reached)
    publisher = await aiormq.connect(nodes.url(0))
    try:
        channel = await publisher.channel(publisher_confirms=True)
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> None:
            try:
                await channel.basic_publish(FLOOR_BODY, exchange=EVENTS_EXCHANGE,
                                            routing_key=key)
            finally:
                gate.release()

        tasks = []
        with Timed(nodes) as timed:
            for _ in range(messages):
                await gate.acquire()
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
            await asyncio.wait_for(counter.done, DELIVERY_TIMEOUT_S)
    finally:
        await publisher.close()
    per_message = 1e6 * timed.node_cpu_s / messages
    report.timed(report.routing_rows, [
        case, f"{messages:,}", str(reached), f"{messages / timed.seconds:,.0f}",
        f"{per_message:,.0f}", f"{per_message / reached:,.0f}"], timed)


# -- the command line ---------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.broker_memory", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller counts: 20 connections, 200 queues, 10,000 bindings")
    parser.add_argument("--cluster", action="store_true",
                        help="three nodes joined in a cluster instead of one")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--queues", type=int)
    parser.add_argument("--bindings", type=int)
    parser.add_argument("--parallel", help="channels binding at once, comma-separated")
    parser.add_argument("--churn", type=int, help="keys bound and unbound per --parallel")
    parser.add_argument("--messages", type=int, help="messages published per routing case")
    parser.add_argument("--fanout", type=int, help="queues holding the group key")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        connections=args.connections or base.connections,
        queues=args.queues or base.queues,
        bindings=args.bindings or base.bindings,
        parallel=(tuple(int(p) for p in args.parallel.split(",")) if args.parallel
                  else base.parallel),
        churn=args.churn or base.churn,
        messages=args.messages or base.messages,
        fanout=args.fanout or base.fanout,
    )
    if min(sizes.parallel) < 1 or sizes.queues < sizes.connections or (
            sizes.fanout > sizes.connections):
        parser.error("--parallel must be positive, --queues at least --connections, "
                     "--fanout at most --connections (one queue of each holds the key)")
    if max(sizes.parallel) > sizes.connections * (CHANNELS_PER_CONNECTION - 1):
        parser.error(f"--parallel {max(sizes.parallel)} needs more connections: each has "
                     f"{CHANNELS_PER_CONNECTION - 1} binding channels")
    print(f"load {os.getloadavg()[0]:.1f} at the start; {sizes}", file=sys.stderr)
    report = Report(args.markdown)
    with started_nodes(args.cluster) as nodes:
        try:
            asyncio.run(asyncio.wait_for(measure(nodes, sizes, report), BUDGET_S))
        finally:
            report.print(nodes)


if __name__ == "__main__":
    main()
