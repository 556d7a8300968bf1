"""``python -m bench.ack_floor``: the drain's floor, an aio-pika consumer that only acks.

A worker (see :mod:`bench.rpc`) with no Warren code in its path: its own exclusive queue
bound to ``warren.events`` under the routing keys it is given, consumed with the edge's
prefetch and acknowledged as the edge and the bare edge acknowledge (grouped: see
:class:`bench.bare_edge.GroupedAck`). Nothing is decoded or written anywhere, so its
CPU per message is what aio-pika's consume path costs by itself.

Requests:

* ``open {amqp_url, keys}``: declare and bind the queue; nothing is consumed yet.
* ``drain {count, timeout_s}``: consume until ``count`` messages have arrived (or the
  time is out), then stop consuming; the wall-clock times of the first and the last.
* ``close``: close the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue

from bench.bare_edge import PREFETCH, GroupedAck
from bench.rpc import run_worker
from shared.messaging.broker import declare_exchanges


class AckFloor:
    def __init__(self) -> None:
        self._connection: AbstractConnection | None = None
        self._queue: AbstractQueue | None = None

    async def open(self, request: dict[str, Any]) -> dict[str, Any]:
        connection = self._connection = await aio_pika.connect(
            str(request["amqp_url"]),
            client_properties={"connection_name": "warren-bench-ack-floor"})
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        events, _commands = await declare_exchanges(channel)
        # Exclusive, not auto-delete: it outlives each drain's consumer, and goes with
        # the connection.
        queue = self._queue = await channel.declare_queue(exclusive=True)
        for key in request["keys"]:
            await queue.bind(events, routing_key=str(key))
        return {"queue": queue.name}

    async def drain(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._queue is not None, "open first"
        count, timeout_s = int(request["count"]), float(request["timeout_s"])
        ack = GroupedAck(PREFETCH)
        done = asyncio.get_running_loop().create_future()
        seen = 0
        first = last = 0.0

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal seen, first, last
            last = time.time()
            if not seen:
                first = last
            seen += 1
            ack.done(message)
            if seen >= count and not done.done():
                done.set_result(None)

        tag = await self._queue.consume(on_message)
        try:
            await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            pass
        finally:
            ack.flush()
            await self._queue.cancel(tag)
        return {"received": seen, "first": first, "last": last}

    async def close(self, _request: dict[str, Any]) -> dict[str, Any]:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description="the drain's floor (a bench.edge_floor worker)")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many s")
    args = parser.parse_args()
    floor = AckFloor()
    run_worker({"open": floor.open, "drain": floor.drain, "close": floor.close}, args.lifetime)


if __name__ == "__main__":
    main()
