"""BindPipeline: the calls that wait together go out as one run, every bind but the
last with ``nowait``; the run's last answer settles them all, its failure fails them all."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.ws_edge.bind_pipeline import BindPipeline


class Channel:
    """Records each method as sent; a synchronous one waits for the test to answer it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bool]] = []
        self.answers: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def queue_bind(self, queue: str, exchange: str, *, routing_key: str,
                         nowait: bool = False) -> None:
        await self._send("bind", routing_key, nowait)

    async def queue_unbind(self, queue: str, exchange: str, *, routing_key: str) -> None:
        await self._send("unbind", routing_key, False)

    async def _send(self, method: str, key: str, nowait: bool) -> None:
        self.sent.append((method, key, nowait))
        if not nowait:
            answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await self.answers.put(answer)
            await answer

    async def answer(self, error: Exception | None = None) -> None:
        pending = await asyncio.wait_for(self.answers.get(), 5)
        if error is None:
            pending.set_result(None)
        else:
            pending.set_exception(error)


def pipeline(channel: Channel) -> BindPipeline:
    async def current() -> Any:
        return channel

    return BindPipeline("q", "x", current)


async def test_binds_that_wait_together_go_out_as_one_run_settled_by_its_last_answer() -> None:
    channel = Channel()
    pipe = pipeline(channel)
    calls = [asyncio.create_task(pipe.bind(key)) for key in ("a", "b", "c")]
    await channel.answer()
    await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert channel.sent == [("bind", "a", True), ("bind", "b", True), ("bind", "c", False)]


async def test_calls_made_while_a_run_waits_go_in_the_next_run() -> None:
    channel = Channel()
    pipe = pipeline(channel)
    first = asyncio.create_task(pipe.bind("a"))
    waiting = asyncio.create_task(channel.answers.get())
    answer = await asyncio.wait_for(waiting, 5)
    later = [asyncio.create_task(pipe.bind("b")), asyncio.create_task(pipe.unbind("c")),
             asyncio.create_task(pipe.bind("d"))]
    answer.set_result(None)
    await asyncio.wait_for(first, 5)
    assert not any(call.done() for call in later)
    await channel.answer()  # the unbind: it has no nowait
    await channel.answer()  # d, the run's last
    await asyncio.wait_for(asyncio.gather(*later), 5)
    assert channel.sent == [("bind", "a", False), ("bind", "b", True), ("unbind", "c", False),
                            ("bind", "d", False)]


async def test_a_failed_run_fails_every_call_in_it_and_the_next_run_goes_out() -> None:
    channel = Channel()
    pipe = pipeline(channel)
    calls = [asyncio.create_task(pipe.bind(key)) for key in ("a", "b")]
    answer = await asyncio.wait_for(channel.answers.get(), 5)
    answer.set_exception(ConnectionError("channel closed"))
    for call in calls:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(call, 5)
    again = asyncio.create_task(pipe.bind("a"))
    await channel.answer()
    await asyncio.wait_for(again, 5)
    assert channel.sent[-1] == ("bind", "a", False)
