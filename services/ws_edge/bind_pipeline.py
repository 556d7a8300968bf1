"""Binds and unbinds of the edge's queue, sent back to back on one channel.

``queue.bind`` is a synchronous AMQP method: sent one at a time, each waits a broker
round trip, and then a turn of the edge's event loop, before the next one goes out;
with many connects in flight, those waits, not the binds, set how soon sockets get
their ``welcome``. But a channel's methods are carried out in order, and one the
broker cannot carry out closes the channel. So the calls that wait together go out as
one run: every bind but the last with ``nowait``, and the answer to the run's last
call says the broker has carried out all of them. If any failed, the channel closed,
and the whole run fails with the same error (each caller sees it as it would have seen
its own). ``queue.unbind`` has no ``nowait`` in AMQP 0-9-1: an unbind in a run waits
for its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import aiormq.abc

ChannelSource = Callable[[], Awaitable[aiormq.abc.AbstractChannel]]


class _Call(NamedTuple):
    key: str
    bind: bool
    done: asyncio.Future[None]


class BindPipeline:
    """Binds and unbinds ``queue`` to ``exchange`` on the channel ``channel`` gives (the
    current one: a robust channel's may change), in runs."""

    def __init__(self, queue: str, exchange: str, channel: ChannelSource) -> None:
        self._queue = queue
        self._exchange = exchange
        self._channel = channel
        self._waiting: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def bind(self, key: str) -> None:
        await self._call(key, bind=True)

    async def unbind(self, key: str) -> None:
        await self._call(key, bind=False)

    async def _call(self, key: str, *, bind: bool) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append(_Call(key, bind, done))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        await done

    async def _send(self) -> None:
        run: list[_Call] = []
        try:
            while self._waiting:
                run, self._waiting = self._waiting, []
                failure: Exception | None = None
                try:
                    await self._run(run)
                except Exception as exc:
                    failure = exc
                for call in run:
                    if call.done.done():
                        continue  # its caller gave up waiting
                    if failure is None:
                        call.done.set_result(None)
                    else:
                        call.done.set_exception(failure)
                run = []
        except asyncio.CancelledError:
            for call in (*run, *self._waiting):
                call.done.cancel()
            self._waiting = []
            raise
        finally:
            self._sender = None

    async def _run(self, run: list[_Call]) -> None:
        channel = await self._channel()
        last = len(run) - 1
        for index, call in enumerate(run):
            if not call.bind:
                await channel.queue_unbind(self._queue, self._exchange, routing_key=call.key)
            elif index < last:
                await channel.queue_bind(
                    self._queue, self._exchange, routing_key=call.key, nowait=True
                )
            else:
                await channel.queue_bind(self._queue, self._exchange, routing_key=call.key)
