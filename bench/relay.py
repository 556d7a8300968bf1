"""cat_relay's own overhead: chat.ask on the broker -> chat.reply on the broker, minus the Cat.

    python -m bench.relay [--users 1,50,500] [--asks 2000] [--think-s 0.5] [--markdown]

Starts a fast v1 Cat (the protocol double, in its own process) and one relay process
on a fresh vhost. N simulated users each ask in a loop: publish ``chat.ask`` (as the
edge would), wait for that ask's ``chat.reply`` on a queue bound to the user's key,
think for a random 0 to 2 x ``--think-s`` seconds (as a person reading the answer
would; 0 makes a closed loop that measures saturation), ask again. For every ask:

    overhead = (reply received - ask confirmed by the broker) - time the Cat spent on it

The Cat's time is what the double measured from receiving the ask to writing its
last frame, fetched from it afterwards. What is left is the relay's intake, forward,
session queue, Cat socket round trip, token and reply publishing, plus the broker
hops. Memory per open Cat socket is the relay's RSS growth while the N sockets are
open, divided by N.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil
from aio_pika.abc import AbstractIncomingMessage
from tornado.httpclient import AsyncHTTPClient

from bench.report import format_table
from bench.servers import ServerProcess, clean_env, free_port
from bench.stats import Histogram
from shared.messaging import Address, Envelope, decode, user_key
from shared.messaging.broker import Publisher, connect, declare_exchanges
from shared.messaging.names import Command, Event
from tests.support.rabbit import BrokerAdmin

TARGET_P99_S = 0.005  # at 50 users


def cat_process(log: Path) -> ServerProcess:
    argv = [sys.executable, "-m", "bench.fast_cat", "--port", str(free_port())]
    return ServerProcess("cat", argv, clean_env({}), "cat ready", log)


def relay_process(amqp_url: str, cat_url: str, database_url: str, log: Path) -> ServerProcess:
    env = clean_env(
        {
            "WARREN_ENV": "development",
            "WARREN_AMQP_URL": amqp_url,
            "WARREN_DATABASE_URL": database_url,
            "WARREN_CAT_URL": cat_url,
            "WARREN_CAT_PROTOCOL": "v1",
            "WARREN_RELAY_HOST": "127.0.0.1",
            "WARREN_RELAY_PORT": str(free_port()),
            "WARREN_LOG_LEVEL": "WARNING",
        }
    )
    env["WARREN_LOG_LEVEL"] = "INFO"  # the ready line is an INFO record
    argv = [sys.executable, "-m", "services.cat_relay"]
    return ServerProcess("relay", argv, env, "cat_relay ready", log)


class Load:
    """Closed-loop askers and the reply listener."""

    def __init__(self, publisher: Publisher, users: int) -> None:
        self._publisher = publisher
        self.users = [f"u{i}" for i in range(users)]
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self.sent: dict[str, tuple[str, float]] = {}  # ask text -> (ask id, published at)
        self.rtt: dict[str, float] = {}  # ask text -> seconds to its reply

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        received = time.perf_counter()
        envelope = decode(message.body)
        if envelope.type == Event.CHAT_REPLY:
            future = self._waiting.pop(envelope.data["ask_id"], None)
            if future is not None and not future.done():
                future.set_result(received)
        elif envelope.type == Event.CHAT_ERROR:
            future = self._waiting.pop(envelope.data["ask_id"], None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(str(envelope.data)))
        await message.ack()

    async def ask(self, user: str, text: str) -> None:
        envelope = Envelope(
            type=Command.CHAT_ASK, to=Address.user(user), sender=Address.user(user), data={"text": text}
        )
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[envelope.id] = future
        await self._publisher.publish_command(envelope)
        on_broker = time.perf_counter()  # confirmed: the ask is in the work queue
        self.rtt[text] = await asyncio.wait_for(future, 30) - on_broker

    async def run(self, asks_per_user: int, tag: str, think_s: float = 0.0) -> float:
        async def user_loop(user: str) -> None:
            for n in range(asks_per_user):
                await asyncio.sleep(random.uniform(0, 2 * think_s))  # pacing, not waiting
                await self.ask(user, f"{tag}-{user}-{n}")

        started = time.perf_counter()
        await asyncio.gather(*(user_loop(u) for u in self.users))
        return time.perf_counter() - started


async def scenario(
    amqp_url: str, cat_url: str, relay: ServerProcess, users: int, total: int, think_s: float
) -> list[str]:
    connection = await connect(amqp_url, name="bench-relay")
    async with connection:
        publisher = await Publisher.open(connection)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        events, _ = await declare_exchanges(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        load = Load(publisher, users)
        for user in load.users:
            await queue.bind(events, routing_key=user_key(user))
        await queue.consume(load.on_event)

        rss_before = psutil.Process(relay.pid).memory_info().rss
        await load.run(1, f"warm{users}")  # opens one Cat socket and session per user
        rss_open = psutil.Process(relay.pid).memory_info().rss
        asks_per_user = max(1, total // users)
        load.rtt.clear()
        elapsed = await load.run(asks_per_user, f"run{users}", think_s)

        stats = orjson.loads((await AsyncHTTPClient().fetch(f"{cat_url}/stats")).body)["served"]
        overhead, cat_time = Histogram(), Histogram()
        for text, rtt in load.rtt.items():
            served = float(stats.get(text, 0.0))
            cat_time.add(served)
            overhead.add(max(0.0, rtt - served))
    asks = len(load.rtt)

    def ms(q: float, h: Histogram) -> str:
        value = h.percentile(q)
        return "-" if value is None else f"{value * 1000:.2f}"

    per_socket = (rss_open - rss_before) / users / 1024
    return [
        str(users), f"{think_s:g}", str(asks), f"{asks / elapsed:,.0f}",
        ms(0.5, overhead), ms(0.95, overhead), ms(0.99, overhead), ms(0.99, cat_time),
        f"{per_socket:.1f}",
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1,50,500")
    parser.add_argument("--asks", type=int, default=2000, help="asks per scenario, spread over the users")
    parser.add_argument("--think-s", type=float, default=0.5,
                        help="mean pause between a user's reply and next ask (0: closed loop)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    admin = BrokerAdmin(amqp_url="amqp://guest:guest@127.0.0.1:5672/", api_url="http://127.0.0.1:15672")
    workdir = Path(tempfile.mkdtemp(prefix="warren-bench-relay-"))
    rows = []
    for users in (int(u) for u in args.users.split(",")):
        vhost = admin.create_vhost("bench-relay")
        amqp_url = admin.vhost_url(vhost)
        cat = cat_process(workdir / f"cat-{users}.log")
        cat_port = await cat.start()
        cat_url = f"http://127.0.0.1:{cat_port}"
        relay = relay_process(amqp_url, cat_url, f"sqlite:///{workdir}/relay-{users}.db",
                              workdir / f"relay-{users}.log")
        await relay.start()
        try:
            rows.append(await scenario(amqp_url, cat_url, relay, users, args.asks, args.think_s))
        finally:
            await relay.stop()
            await cat.stop()
            admin.delete_vhost(vhost)
    headers = ["users", "think s", "asks", "asks/s", "overhead p50 ms", "p95 ms", "p99 ms",
               "Cat p99 ms", "KiB per Cat socket"]
    print(format_table(headers, rows, args.markdown))
    at_50 = next((r for r in rows if r[0] == "50"), None)
    if at_50 is not None:
        verdict = "met" if float(at_50[6]) < TARGET_P99_S * 1000 else "MISSED"
        print(f"\ntarget: overhead p99 < {TARGET_P99_S * 1000:g} ms at 50 users: {verdict} ({at_50[6]} ms)")
    print(f"logs: {workdir}")


if __name__ == "__main__":
    asyncio.run(main())
