"""cat_relay's own overhead: chat.ask on the broker -> chat.reply on the broker, minus the Cat.

    python -m bench.relay [--scenarios 1:0,50:1,500:1,500:5,50:0] [--duration-s 20] [--repeat 1]

Each scenario starts a fresh vhost, a fast Cat 1.x (``bench/fast_cat.py``: by default 8
tokens streamed 10 ms apart, then the final frame: about 80 ms) and one relay process
(``python -m services.cat_relay``, default settings). ``USERS:THINK`` simulates USERS
users at once, each in a loop: publish ``chat.ask`` to ``warren.commands`` as the edge
does (persistent, confirmed), wait for that ask's ``chat.reply`` on a queue bound to the
user's key, pause a random 0 to 2 x THINK seconds (a person reading the answer; 0: ask
again at once, which measures saturation), ask again. Users start at random moments
within the first 2 x THINK seconds. For every ask:

    overhead = (chat.reply received - chat.ask confirmed by the broker) - the Cat's time

The Cat's time is what the Cat process measured from reading the ask off its socket to
writing the final frame, fetched from it afterwards. What is left is the relay's work
and its hops: the broker delivering the ask, the ask to the Cat and the answer back over
the WebSocket, the token batch and the reply through the broker to the reader.

The Cat also reports when (``time.perf_counter``, the host's monotonic clock, which
every process here reads alike) it read each ask and wrote each final frame, which
splits the overhead in two: ``to Cat``, from the ask's confirm to the Cat reading it
(the broker delivering the ask, the relay taking it, the WebSocket frame to the Cat),
and ``from Cat``, from the final frame to the reply's arrival here (the relay reading
it and publishing the reply, the broker routing and delivering it).

Before measuring, every user asks twice (the first ask of a user sets up its session
and Cat socket through the session queue; later ones are answered without that hop).
``KiB/session``: the relay's RSS growth over that warm-up divided by the users, i.e. one
session (consumer, claim, job queue) plus one open Cat socket each; ``Cat sockets`` is
the relay's own gauge afterwards. ``--socket-memory N`` also opens N sockets with the
relay's v1 client alone, in this process, and reports RSS and Python heap per socket.

CPU: each process's user + system time over the measured window, per ask: the relay,
the broker, the Cat and this load generator (they share the machine). ``load`` is the
1-minute load average when the scenario started and ``other cores`` the CPU used
meanwhile by processes outside the bench (other sessions' tests): both say how noisy
the figure is.

``--floor`` runs ``bench/null_relay.py`` in the relay's place: the same broker and Cat
hops and nothing else, the floor the relay is compared against. ``--relay-root DIR``
runs the relay from another checkout. The bench client, the Cat and the relay (as
deployed) run on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop
from aio_pika.abc import AbstractIncomingMessage
from tornado.httpclient import AsyncHTTPClient

from bench.report import format_table
from bench.rpc import REPO_ROOT
from bench.servers import ServerProcess, clean_env, free_port
from shared.messaging import Address, Envelope, user_key
from shared.messaging.broker import Publisher, connect, declare_exchanges
from shared.messaging.names import Command, Event
from tests.support.rabbit import BrokerAdmin

TARGET_P99_MS = 5.0  # at 50 users
TARGET_USERS = 50
ASK_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Scenario:
    users: int
    think_s: float

    @classmethod
    def parse(cls, text: str) -> Scenario:
        users, _, think = text.partition(":")
        return cls(int(users), float(think or 0))


@dataclass(slots=True)
class Sample:
    text: str
    confirmed: float
    asked_ts: float  # the ask's envelope ts: this process's clock just before publishing it
    reply: float = 0.0
    replied_ts: float = 0.0  # the reply's envelope ts: the relay's clock just before publishing


@dataclass(slots=True)
class Load:
    """The simulated users and the reader of their replies."""

    publisher: Publisher
    users: list[str]
    waiting: dict[str, asyncio.Future[tuple[float, float]]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    serial: int = 0

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        received = time.perf_counter()
        event = orjson.loads(message.body)
        if event["type"] in (Event.CHAT_REPLY, Event.CHAT_ERROR):
            future = self.waiting.pop(event["data"]["ask_id"], None)
            if future is not None and not future.done():
                if event["type"] == Event.CHAT_REPLY:
                    future.set_result((received, float(event["ts"])))
                else:
                    future.set_exception(RuntimeError(str(event["data"])))

    async def ask(self, user: str) -> Sample:
        self.serial += 1
        text = f"{user}-{self.serial}"
        address = Address.user(user)
        envelope = Envelope(type=Command.CHAT_ASK, to=address, sender=address, data={"text": text})
        future: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
        self.waiting[envelope.id] = future
        await self.publisher.publish_command(envelope)
        sample = Sample(text, time.perf_counter(), envelope.ts)  # confirmed: in the work queue
        sample.reply, sample.replied_ts = await asyncio.wait_for(future, ASK_TIMEOUT_S)
        return sample

    async def round(self) -> None:
        """Every user asks once, all at the same time (warm-up)."""
        await asyncio.gather(*(self.ask(u) for u in self.users))

    async def run(self, think_s: float, duration_s: float) -> float:
        stop_at = time.perf_counter() + duration_s

        async def user(name: str) -> None:
            await asyncio.sleep(random.uniform(0, 2 * think_s))
            while time.perf_counter() < stop_at:
                try:
                    self.samples.append(await self.ask(name))
                except RuntimeError:
                    self.errors += 1
                if think_s:
                    await asyncio.sleep(random.uniform(0, 2 * think_s))

        started = time.perf_counter()
        await asyncio.gather(*(user(u) for u in self.users))
        return time.perf_counter() - started


def cat_process(log: Path, tokens: int = 8, pace_ms: float = 10.0) -> ServerProcess:
    argv = [sys.executable, "-m", "bench.fast_cat", "--port", str(free_port()),
            "--tokens", str(tokens), "--pace-ms", str(pace_ms)]
    return ServerProcess("cat", argv, clean_env({}), "cat ready", log)


def relay_process(
    amqp_url: str, cat_url: str, database_url: str, port: int, log: Path, root: Path, floor: bool
) -> ServerProcess:
    env = clean_env(
        {
            "WARREN_ENV": "development",
            "WARREN_AMQP_URL": amqp_url,
            "WARREN_DATABASE_URL": database_url,
            "WARREN_CAT_URL": cat_url,
            "WARREN_CAT_PROTOCOL": "v1",
            "WARREN_RELAY_HOST": "127.0.0.1",
            "WARREN_RELAY_PORT": str(port),
            "WARREN_LOG_LEVEL": "INFO",  # the ready line is an INFO record
        },
        root,
    )
    argv = [sys.executable, "-m", "bench.null_relay" if floor else "services.cat_relay"]
    return ServerProcess("relay", argv, env, "cat_relay ready", log, cwd=root)


def broker_process() -> psutil.Process | None:
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "beam.smp":
            return process
    return None


def cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system + times.children_user + times.children_system)


def busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq + times.steal)


async def relay_metric(port: int, name: str, labels: str = "") -> float:
    text = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")).body.decode()
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def relay_buckets(port: int, name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets ``(le, count)`` from the relay's /metrics."""
    text = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")).body.decode()
    found = re.findall(rf'^{re.escape(name)}_bucket{{le="([^"]+)"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    return [(float(le), float(count)) for le, count in found]


def bucket_pct(buckets: list[tuple[float, float]], q: float) -> float:
    """A percentile from cumulative buckets, linear within its bucket (ms); inf past the last."""
    total = buckets[-1][1]
    rank = q * total
    low_le, low_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return float("inf")
            share = (rank - low_count) / (count - low_count) if count > low_count else 1.0
            return (low_le + share * (le - low_le)) * 1000
        low_le, low_count = le, count
    return float("inf")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


async def measure(
    amqp_url: str, cat_url: str, relay: ServerProcess, relay_port: int, cat: ServerProcess,
    scenario: Scenario, duration_s: float,
) -> dict[str, float]:
    connection = await connect(amqp_url, name="bench-relay")
    async with connection:
        publisher = await Publisher.open(connection)
        channel = await connection.channel()
        events, _ = await declare_exchanges(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        load = Load(publisher, [f"u{i}" for i in range(scenario.users)])
        for user in load.users:
            await queue.bind(events, routing_key=user_key(user))
        await queue.consume(load.on_event, no_ack=True)

        relay_ps = psutil.Process(relay.pid)
        rss_before = relay_ps.memory_info().rss
        await load.round()  # sessions and Cat sockets open
        await load.round()  # and the dispatcher answers the next asks itself
        rss_open = relay_ps.memory_info().rss
        sockets = await relay_metric(relay_port, "warren_relay_cat_sockets")
        routed_before = {r: await relay_metric(relay_port, "warren_relay_routed_total", f'{{route="{r}"}}')
                         for r in ("local", "session")}
        own_before = await relay_buckets(relay_port, "warren_relay_overhead_seconds")

        ours = [relay_ps, psutil.Process(cat.pid), psutil.Process(os.getpid()), broker_process()]
        load1 = os.getloadavg()[0]
        cpu0 = [cpu_seconds(p) for p in ours]
        busy0 = busy_seconds()
        elapsed = await load.run(scenario.think_s, duration_s)
        cpu = [cpu_seconds(p) - c for p, c in zip(ours, cpu0)]
        busy = busy_seconds() - busy0
        routed = {r: await relay_metric(relay_port, "warren_relay_routed_total", f'{{route="{r}"}}')
                  - routed_before[r] for r in ("local", "session")}
        own_after = await relay_buckets(relay_port, "warren_relay_overhead_seconds")
        own = [(le, count - before) for (le, count), (_, before) in zip(own_after, own_before)]

    stats = orjson.loads((await AsyncHTTPClient().fetch(f"{cat_url}/stats")).body)
    served, spans = stats["served"], stats["spans"]
    overhead = [(s.reply - s.confirmed - float(served[s.text])) * 1000 for s in load.samples]
    to_cat = [(spans[s.text][0] - s.confirmed) * 1000 for s in load.samples]
    from_cat = [(s.reply - spans[s.text][1]) * 1000 for s in load.samples]
    published = [(s.replied_ts - s.asked_ts - float(served[s.text])) * 1000 for s in load.samples]
    cat_ms = [float(served[s.text]) * 1000 for s in load.samples]
    asks = len(load.samples)
    return {
        "users": scenario.users, "think": scenario.think_s, "asks": asks, "errors": load.errors,
        "rate": asks / elapsed,
        "p50": pct(overhead, 0.50), "p95": pct(overhead, 0.95), "p99": pct(overhead, 0.99),
        "max": max(overhead), "cat_p50": statistics.median(cat_ms),
        "to_p50": pct(to_cat, 0.50), "to_p99": pct(to_cat, 0.99),
        "pub_p50": pct(published, 0.50), "pub_p99": pct(published, 0.99),
        "from_p50": pct(from_cat, 0.50), "from_p99": pct(from_cat, 0.99),
        "own_p50": bucket_pct(own, 0.5) if own else float("nan"),
        "own_p99": bucket_pct(own, 0.99) if own else float("nan"),
        "own_5ms": 100 * next((c for le, c in own if le == 0.005), 0.0) / own[-1][1] if own else float("nan"),
        "cpu_ms": cpu[0] / asks * 1000, "relay_pct": cpu[0] / elapsed * 100,
        "cat_ms": cpu[1] / asks * 1000, "client_ms": cpu[2] / asks * 1000,
        "broker_ms": cpu[3] / asks * 1000,
        "local_pct": 100 * routed["local"] / max(1.0, routed["local"] + routed["session"]),
        "sockets": sockets, "kib_socket": (rss_open - rss_before) / scenario.users / 1024,
        "load1": load1, "other": max(0.0, busy - sum(cpu)) / elapsed,
    }


async def run_scenario(
    admin: BrokerAdmin, workdir: Path, scenario: Scenario, args: argparse.Namespace, n: int
) -> dict[str, float]:
    vhost = admin.create_vhost("warren-bench-relay")
    tag = f"{scenario.users}-{scenario.think_s:g}-{n}"
    cat = cat_process(workdir / f"cat-{tag}.log", args.tokens, args.pace_ms)
    relay_port = free_port()
    try:
        cat_url = f"http://127.0.0.1:{await cat.start()}"
        relay = relay_process(admin.vhost_url(vhost), cat_url, f"sqlite:///{workdir}/relay-{tag}.db",
                              relay_port, workdir / f"relay-{tag}.log", args.relay_root,
                              args.floor)
        await relay.start()
        try:
            return await measure(admin.vhost_url(vhost), cat_url, relay, relay_port, cat,
                                 scenario, args.duration_s)
        finally:
            await relay.stop()
    finally:
        await cat.stop()
        admin.delete_vhost(vhost)


async def socket_memory(workdir: Path, sockets: int) -> tuple[float, float]:
    """KiB of RSS and of Python heap (tracemalloc) per open socket of the relay's own v1 client,
    measured in this process against the fast Cat: the socket alone, without a session."""
    import gc
    import tracemalloc
    from concurrent.futures import ThreadPoolExecutor

    from services.cat_relay.cat.v1 import V1Client
    from services.cat_relay.settings import CatSettings

    cat = cat_process(workdir / "cat-memory.log")
    try:
        url = f"http://127.0.0.1:{await cat.start()}"
        settings = CatSettings.from_env({"WARREN_CAT_URL": url}, development=True)
        client = V1Client(settings, ThreadPoolExecutor(1))

        async def nothing() -> list[Any]:
            return []

        await client.ask("warm", "hi", nothing, lambda _t: None)  # imports and first buffers
        gc.collect()
        tracemalloc.start()
        heap0, rss0 = tracemalloc.get_traced_memory()[0], psutil.Process().memory_info().rss
        for start in range(0, sockets, 50):
            await asyncio.gather(*(client.ask(f"m{i}", "hi", nothing, lambda _t: None)
                                   for i in range(start, min(sockets, start + 50))))
        gc.collect()
        heap, rss = tracemalloc.get_traced_memory()[0], psutil.Process().memory_info().rss
        tracemalloc.stop()
        assert client.open_sockets == sockets + 1
        await client.close()
        return (rss - rss0) / sockets / 1024, (heap - heap0) / sockets / 1024
    finally:
        await cat.stop()


HEADERS = ["users", "think s", "asks", "asks/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
           "to Cat p50 ms", "p99 ms", "from Cat p50 ms", "p99 ms",
           "publish -> publish p50 ms", "p99 ms", "relay-side p50 ms", "p99 ms", "<= 5 ms %", "Cat p50 ms", "relay CPU %", "CPU ms/ask: relay", "broker", "Cat", "client",
           "local %", "Cat sockets", "KiB/session", "load", "other cores"]


def cells(r: dict[str, float]) -> list[str]:
    asks = f"{r['asks']:.0f}" + (f" ({r['errors']:.0f} err)" if r["errors"] else "")
    return [
        f"{r['users']:.0f}", f"{r['think']:g}", asks, f"{r['rate']:,.0f}",
        f"{r['p50']:.2f}", f"{r['p95']:.2f}", f"{r['p99']:.2f}", f"{r['max']:.1f}",
        f"{r['to_p50']:.2f}", f"{r['to_p99']:.2f}", f"{r['from_p50']:.2f}", f"{r['from_p99']:.2f}",
        f"{r['pub_p50']:.2f}", f"{r['pub_p99']:.2f}",
        f"{r['own_p50']:.2f}", f"{r['own_p99']:.2f}", f"{r['own_5ms']:.2f}", f"{r['cat_p50']:.1f}", f"{r['relay_pct']:.0f}", f"{r['cpu_ms']:.2f}",
        f"{r['broker_ms']:.2f}", f"{r['cat_ms']:.2f}", f"{r['client_ms']:.2f}",
        f"{r['local_pct']:.1f}", f"{r['sockets']:.0f}", f"{r['kib_socket']:.1f}",
        f"{r['load1']:.2f}", f"{r['other']:.2f}",
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="1:0,50:1,500:1,500:5,50:0",
                        help="USERS:THINK_S, comma-separated (default 1:0,50:1,500:1,500:5,50:0)")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer of the fast Cat")
    parser.add_argument("--pace-ms", type=float, default=10.0, help="between the Cat's tokens")
    parser.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per scenario")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--relay-root", type=Path, default=REPO_ROOT,
                        help="run the relay from another checkout, to compare a change")
    parser.add_argument("--floor", action="store_true",
                        help="run bench/null_relay.py instead of the relay: the same hops, nothing else")
    parser.add_argument("--socket-memory", type=int, default=500, metavar="N",
                        help="also measure N open v1 sockets of the relay's Cat client alone (0: no)")
    args = parser.parse_args()

    admin = BrokerAdmin(amqp_url="amqp://guest:guest@127.0.0.1:5672/", api_url="http://127.0.0.1:15672")
    workdir = Path(tempfile.mkdtemp(prefix="warren-bench-relay-"))
    results = []
    for n in range(args.repeat):
        for scenario in map(Scenario.parse, args.scenarios.split(",")):
            result = await run_scenario(admin, workdir, scenario, args, n)
            results.append(result)
            print(format_table(HEADERS, [cells(result)], False).splitlines()[-1], flush=True)
    print()
    print(format_table(HEADERS, [cells(r) for r in results], args.markdown))
    target = [r["p99"] for r in results if r["users"] == TARGET_USERS and r["think"] > 0]
    if args.floor:
        print("\n(the floor: bench/null_relay.py ran in the relay's place)")
    elif target:
        verdict = "met" if max(target) < TARGET_P99_MS else "MISSED"
        print(f"\ntarget: overhead p99 < {TARGET_P99_MS:g} ms at {TARGET_USERS} users: {verdict} "
              f"({', '.join(f'{p:.2f}' for p in target)} ms)")
    if args.socket_memory:
        rss_kib, heap_kib = await socket_memory(workdir, args.socket_memory)
        print(f"\nmemory per open Cat socket ({args.socket_memory} sockets of the v1 client alone): "
              f"{rss_kib:.1f} KiB RSS, {heap_kib:.1f} KiB Python heap")
    print(f"logs: {workdir}")


if __name__ == "__main__":
    uvloop.run(main())
