"""The floor under every broker hop: one message through RabbitMQ to one consumer, nothing else.

    python -m bench.broker_floor [--messages 400] [--rounds 2] [--url AMQP_URL] [--markdown]

One process opens two connections to the broker, as a service and its reader would: one
publishes with publisher confirms to the default exchange, the other consumes from an
exclusive, server-named queue (nothing else in the vhost is touched). Messages go one at
a time, 20 ms apart (a light load, like cat_relay's 50 users), and each is timed from the
publish call to its confirm and to the consumer's callback. A relay's ask and its reply
each make such a hop, so no chat overhead measured through the broker can be lower; the
latency targets of the fan-out and the relay sit on top of it.

Both aio-pika (what the services use) and aiormq (the protocol library under it, without
aio-pika's objects) are measured, so the client library's share can be told from the
broker's and the machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import aio_pika
import aiormq
import uvloop
from aiormq.abc import DeliveredMessage

from bench.report import format_table

AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"  # the machine's broker
PACE_S: Final = 0.02

#: Per message: (publish -> confirm, publish -> consumer callback), in ms.
Timings = list[tuple[float, float]]


class Arrivals:
    """The consumer's side: when each body arrived."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, asyncio.Future[float]] = {}

    def expect(self, body: bytes) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[body] = future
        return future

    def arrived(self, body: bytes) -> None:
        now = time.perf_counter()
        future = self._waiting.pop(body, None)
        if future is not None and not future.done():
            future.set_result(now)


async def timed(publish: Callable[[bytes], Awaitable[object]], arrivals: Arrivals,
                messages: int) -> Timings:
    timings = []
    for seq in range(messages):
        body = str(seq).encode()
        arrived = arrivals.expect(body)
        started = time.perf_counter()
        await publish(body)
        confirmed = time.perf_counter()
        received = await asyncio.wait_for(arrived, 10)
        timings.append(((confirmed - started) * 1000, (received - started) * 1000))
        await asyncio.sleep(PACE_S)
    return timings


async def through_aio_pika(url: str, messages: int) -> Timings:
    publisher = await aio_pika.connect(url)
    reader = await aio_pika.connect(url)
    try:
        channel = await publisher.channel(publisher_confirms=True)
        queue = await (await reader.channel()).declare_queue(exclusive=True, auto_delete=True)
        arrivals = Arrivals()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrivals.arrived(message.body)

        await queue.consume(on_message, no_ack=True)

        async def publish(body: bytes) -> object:
            return await channel.default_exchange.publish(aio_pika.Message(body), queue.name)

        return await timed(publish, arrivals, messages)
    finally:
        await reader.close()
        await publisher.close()


async def through_aiormq(url: str, messages: int) -> Timings:
    publisher = await aiormq.connect(url)
    reader = await aiormq.connect(url)
    try:
        channel = await publisher.channel(publisher_confirms=True)
        reading = await reader.channel()
        queue = (await reading.queue_declare(exclusive=True, auto_delete=True)).queue
        assert queue is not None
        arrivals = Arrivals()

        async def on_message(message: DeliveredMessage) -> None:
            arrivals.arrived(message.body)

        await reading.basic_consume(queue, on_message, no_ack=True)

        async def publish(body: bytes) -> object:
            return await channel.basic_publish(body, routing_key=queue)

        return await timed(publish, arrivals, messages)
    finally:
        await reader.close()
        await publisher.close()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, messages: int, rounds: int) -> list[list[str]]:
    rows = []
    for _ in range(rounds):
        for name, run in (("aio-pika", through_aio_pika), ("aiormq", through_aiormq)):
            timings = await run(url, messages)
            confirm = [c for c, _r in timings]
            receive = [r for _c, r in timings]
            rows.append([name, f"{len(timings)}",
                         *(f"{percentile(confirm, q):.2f}" for q in (0.5, 0.99)),
                         *(f"{percentile(receive, q):.2f}" for q in (0.5, 0.99)),
                         f"{max(receive):.1f}"])
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--url", default=AMQP_URL, help="the broker (a 127.0.0.1 one)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    rows = uvloop.run(measure(args.url, args.messages, args.rounds))
    print(format_table(["client", "messages", "confirm p50 ms", "p99 ms", "received p50 ms",
                        "p99 ms", "max ms"], rows, args.markdown))


if __name__ == "__main__":
    main()
