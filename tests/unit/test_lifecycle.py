"""One lifecycle for every service (shared/lifecycle.py): reverse order, start failures
unwound, failing steps isolated, and the shutdown deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from shared.lifecycle import Lifecycle


async def test_steps_close_in_the_reverse_of_the_order_they_were_registered() -> None:
    closed: list[str] = []
    life = Lifecycle("test", deadline_s=5.0)

    async def close_broker() -> None:
        closed.append("broker")

    async def drain() -> None:
        closed.append("drain")

    life.callback(closed.append, "threads")
    life.callback(closed.append, "database")
    life.push_async_callback(close_broker)
    life.push_async_callback(drain, bounded=False)
    await life.aclose()
    assert closed == ["drain", "broker", "database", "threads"]


async def test_a_failed_start_closes_what_it_started_and_propagates() -> None:
    closed: list[str] = []
    life = Lifecycle("test", deadline_s=5.0)
    with pytest.raises(OSError, match="address in use"):
        async with life.starting():
            life.callback(closed.append, "database")
            life.callback(closed.append, "broker")
            raise OSError("address in use")
    assert closed == ["broker", "database"]
    assert life.closing
    await life.aclose()  # a stop after the failed start closes nothing twice
    assert closed == ["broker", "database"]


async def test_a_cancelled_start_closes_what_it_started() -> None:
    closed: list[str] = []
    life = Lifecycle("test", deadline_s=5.0)
    started = asyncio.Event()

    async def start() -> None:
        async with life.starting():
            life.callback(closed.append, "broker")
            started.set()
            await asyncio.Event().wait()  # a start that hangs, until cancelled

    task = asyncio.create_task(start())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["broker"]


async def test_a_step_that_fails_is_logged_and_the_others_still_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []
    life = Lifecycle("test", deadline_s=5.0)

    async def broken() -> None:
        raise ConnectionResetError("broker gone")

    def broken_sync() -> None:
        raise RuntimeError("engine already disposed")

    life.callback(closed.append, "threads")
    life.callback(broken_sync)
    life.push_async_callback(broken, name="the broker connection")
    life.callback(closed.append, "listener")
    with caplog.at_level(logging.WARNING, logger="shared.lifecycle"):
        await life.aclose()
    assert closed == ["listener", "threads"]
    failures = [r.getMessage() for r in caplog.records]
    assert "test: the broker connection failed while closing" in failures
    assert any("broken_sync failed while closing" in message for message in failures)


async def test_a_step_that_hangs_is_cut_at_the_deadline_and_the_rest_still_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []
    life = Lifecycle("test", deadline_s=0.05)

    async def hangs() -> None:
        await asyncio.Event().wait()  # a broker that never answers

    life.callback(closed.append, "threads")
    life.push_async_callback(hangs, name="consumer channel")
    with caplog.at_level(logging.WARNING, logger="shared.lifecycle"):
        await life.aclose()
    assert closed == ["threads"]
    assert "test: consumer channel did not finish before the shutdown deadline" in [
        r.getMessage() for r in caplog.records
    ]


async def test_the_bounded_steps_share_one_deadline() -> None:
    reached: list[str] = []
    life = Lifecycle("test", deadline_s=0.05)

    async def connection_close() -> None:
        await asyncio.sleep(0)
        reached.append("connection closed")

    async def channel_close() -> None:
        await asyncio.Event().wait()

    life.push_async_callback(connection_close)
    life.push_async_callback(channel_close)
    await life.aclose()
    # The channel used the whole deadline: the connection's close got none of it.
    assert reached == []


async def test_a_drain_applies_its_own_deadline_not_the_shared_one() -> None:
    life = Lifecycle("test", deadline_s=0.01)
    drained = asyncio.Event()
    finished: list[str] = []

    async def drain() -> None:
        await drained.wait()
        finished.append("drain")

    async def close_broker() -> None:
        finished.append("broker")

    life.push_async_callback(close_broker)
    life.push_async_callback(drain, bounded=False)
    asyncio.get_running_loop().call_later(0.1, drained.set)  # longer than the deadline
    await life.aclose()
    assert finished == ["drain", "broker"]  # and the drain did not use up the budget


async def test_closing_twice_closes_once_and_a_second_caller_waits_for_the_first() -> None:
    closed: list[str] = []
    life = Lifecycle("test", deadline_s=5.0)
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()
        closed.append("slow")

    life.push_async_callback(slow, bounded=False)
    first = asyncio.create_task(life.aclose())
    second = asyncio.create_task(life.aclose())
    await asyncio.sleep(0)
    assert not second.done()
    release.set()
    assert list(await asyncio.gather(first, second)) == [True, False]  # only the first ran them
    assert closed == ["slow"]


async def test_nothing_can_be_registered_once_closing() -> None:
    life = Lifecycle("test", deadline_s=5.0)
    await life.aclose()
    with pytest.raises(RuntimeError, match="closing"):
        life.callback(print)


async def test_context_managers_and_background_tasks_are_resources_too() -> None:
    events: list[str] = []
    life = Lifecycle("test", deadline_s=5.0)

    @contextlib.asynccontextmanager
    async def broker() -> AsyncIterator[str]:
        events.append("open")
        yield "connection"
        events.append("closed")

    async def heartbeat() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("heartbeat cancelled")
            raise

    assert await life.enter_async(broker()) == "connection"
    task = life.create_task(heartbeat(), name="heartbeat")
    await asyncio.sleep(0)
    await life.aclose()
    assert task.cancelled()
    assert events == ["open", "heartbeat cancelled", "closed"]
