"""What one chat session queue costs the broker: classic (relays before issue 18) against
quorum (now), per user being answered.

    python -m bench.chat_queues [--queues 500] [--cluster] [--markdown]

On a node of its own, started fresh (``tests/support/private_broker.py``), or with
``--cluster`` on three such nodes joined as production's are (``tests/support/cluster.py``),
where each quorum queue has a member on every node. The shared broker is not touched.
For each kind, ``--queues`` session queues are declared one after another on one
channel, with the arguments each version of Warren gives them (the quorum ones through
``shared.messaging.broker.declare_session_queue``); then each gets a consumer (a session
being answered), the consumers are cancelled, and the queues deleted. Printed per kind:
the declaration's latency (p50, p95), the time to consume and to cancel, and the memory
of the nodes (summed) per queue, idle and consumed, each a difference of the nodes'
breakdown after a garbage collection (``bench.broker_memory.read_memory``), divided by
the queues. Load average printed with the table: compare only runs on a quiet host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from bench.broker_memory import read_memory
from bench.report import format_table
from shared.messaging.broker import CHAT_SESSION_EXPIRES_MS, connect, declare_session_queue
from shared.messaging.names import (
    DEAD_LETTER_EXCHANGE,
    Command,
    classic_chat_session_queue_name,
    dead_letter_queue_name,
    work_queue_name,
)
from tests.support.cluster import RabbitCluster
from tests.support.private_broker import PrivateBroker

KINDS: Final = ("classic", "quorum")


@dataclass(frozen=True, slots=True)
class Result:
    kind: str
    declare_ms: list[float]
    consume_s: float
    cancel_s: float
    delete_s: float
    idle_bytes: float
    consumed_bytes: float


async def _declare_classic(channel: AbstractRobustChannel, user: str) -> AbstractQueue:
    """A session queue as relays before the quorum chat queues declared it."""
    return await channel.declare_queue(
        classic_chat_session_queue_name(user),
        durable=True,
        arguments={
            "x-single-active-consumer": True,
            "x-expires": CHAT_SESSION_EXPIRES_MS,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": dead_letter_queue_name(work_queue_name(Command.CHAT_ASK)),
        },
        robust=False,
    )


def _memory(nodes: Sequence[PrivateBroker]) -> int:
    return sum(read_memory(node).erlang for node in nodes)


async def _measure(kind: str, url: str, nodes: Sequence[PrivateBroker], count: int) -> Result:
    connection = await connect(url, name=f"bench-chat-queues-{kind}")
    try:
        channel = await connection.channel()
        assert isinstance(channel, AbstractRobustChannel)
        declare = declare_session_queue if kind == "quorum" else _declare_classic
        before = await asyncio.to_thread(_memory, nodes)
        queues: list[AbstractQueue] = []
        declare_ms: list[float] = []
        for n in range(count):
            started = time.perf_counter()
            queues.append(await declare(channel, f"bench-{n}"))
            declare_ms.append((time.perf_counter() - started) * 1000)
        idle = await asyncio.to_thread(_memory, nodes)

        async def ignore(_message: AbstractIncomingMessage) -> None:
            pass

        started = time.perf_counter()
        tags = [await queue.consume(ignore) for queue in queues]
        consume_s = time.perf_counter() - started
        consumed = await asyncio.to_thread(_memory, nodes)
        started = time.perf_counter()
        for queue, tag in zip(queues, tags):
            await queue.cancel(tag)
        cancel_s = time.perf_counter() - started
        started = time.perf_counter()
        for queue in queues:
            await queue.delete(if_unused=False, if_empty=False)
        delete_s = time.perf_counter() - started
    finally:
        await connection.close()
    return Result(kind, declare_ms, consume_s, cancel_s, delete_s,
                  (idle - before) / count, (consumed - before) / count)


def _row(result: Result, count: int) -> list[str]:
    ordered = sorted(result.declare_ms)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return [
        result.kind,
        f"{statistics.median(ordered):.2f}",
        f"{p95:.2f}",
        f"{result.consume_s * 1000 / count:.2f}",
        f"{result.cancel_s * 1000 / count:.2f}",
        f"{result.delete_s * 1000 / count:.2f}",
        f"{result.idle_bytes / 1024:.1f}",
        f"{result.consumed_bytes / 1024:.1f}",
    ]


async def _run(url: str, nodes: Sequence[PrivateBroker], count: int) -> list[Result]:
    return [await _measure(kind, url, nodes, count) for kind in KINDS]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, default=500, help="session queues per kind")
    parser.add_argument("--cluster", action="store_true", help="on three clustered nodes")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="warren-bench-chat-queues-"))
    directory.chmod(0o755)
    try:
        if args.cluster:
            cluster = RabbitCluster.start(directory)
            try:
                vhost = cluster.create_vhost("bench-chat")
                results = asyncio.run(_run(cluster.vhost_url(vhost), cluster.nodes, args.queues))
            finally:
                cluster.close()
        else:
            node = PrivateBroker.start(directory / "node")
            try:
                results = asyncio.run(_run(node.url, (node,), args.queues))
            finally:
                node.crash()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    where = "three clustered nodes" if args.cluster else "one node"
    print(f"{args.queues} session queues per kind, on {where}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(format_table(
        ["kind", "declare p50 ms", "declare p95 ms", "consume ms", "cancel ms", "delete ms",
         "KiB/queue idle", "KiB/queue consumed"],
        [_row(r, args.queues) for r in results], args.markdown,
    ))


if __name__ == "__main__":
    main()
