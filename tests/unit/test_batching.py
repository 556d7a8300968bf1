"""Lookups asked together (shared/db/batching.py), with a fetch that waits until told."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.db.batching import MOST_KEYS, Batched

WAIT = 5.0


class Table:
    """A fetch that records each query's keys and holds the first one until released."""

    def __init__(self, rows: Mapping[str, int], fail_with: Exception | None = None) -> None:
        self.rows = rows
        self.queries: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_with = fail_with

    def fetch(self, keys: Sequence[str]) -> Mapping[str, int]:
        self.queries.append(list(keys))
        self.started.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("never released")
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return {key: self.rows[key] for key in keys if key in self.rows}


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


async def first_query_running(table: Table) -> None:
    assert await asyncio.to_thread(table.started.wait, WAIT)


async def test_a_lone_lookup_is_one_query_and_a_missing_key_gets_the_default(
    executor: ThreadPoolExecutor,
) -> None:
    table = Table({"alice": 1})
    table.release.set()
    lookup = Batched(table.fetch, 0, executor)
    assert await lookup.get("alice") == 1
    assert await lookup.get("nobody") == 0
    assert table.queries == [["alice"], ["nobody"]]


async def test_lookups_made_while_a_query_runs_go_together_in_the_next(
    executor: ThreadPoolExecutor,
) -> None:
    table = Table({"alice": 1, "bob": 2, "carol": 3})
    lookup = Batched(table.fetch, 0, executor)
    first = asyncio.create_task(lookup.get("alice"))
    await first_query_running(table)
    later = [asyncio.create_task(lookup.get(key)) for key in ("bob", "carol", "bob", "dave")]
    await asyncio.sleep(0)  # let them all be asked before the first query ends
    table.release.set()
    assert await asyncio.wait_for(first, WAIT) == 1
    assert await asyncio.wait_for(asyncio.gather(*later), WAIT) == [2, 3, 2, 0]
    # One query for the four, each key once.
    assert table.queries == [["alice"], ["bob", "carol", "dave"]]


async def test_a_batch_holds_at_most_most_keys(executor: ThreadPoolExecutor) -> None:
    table = Table({})
    lookup = Batched(table.fetch, 0, executor)
    first = asyncio.create_task(lookup.get("k"))
    await first_query_running(table)
    keys = [f"u{i}" for i in range(MOST_KEYS + 1)]
    later = [asyncio.create_task(lookup.get(key)) for key in keys]
    await asyncio.sleep(0)
    table.release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), WAIT)
    assert [len(query) for query in table.queries] == [1, MOST_KEYS, 1]


async def test_a_failed_query_fails_its_callers_only_and_the_next_one_runs(
    executor: ThreadPoolExecutor,
) -> None:
    table = Table({"alice": 1, "bob": 2}, fail_with=OSError("database away"))
    lookup = Batched(table.fetch, 0, executor)
    first = asyncio.create_task(lookup.get("alice"))
    await first_query_running(table)
    second = asyncio.create_task(lookup.get("bob"))
    await asyncio.sleep(0)
    table.release.set()
    with pytest.raises(OSError, match="database away"):
        await asyncio.wait_for(first, WAIT)
    assert await asyncio.wait_for(second, WAIT) == 2


async def test_a_caller_that_gives_up_does_not_disturb_the_others(
    executor: ThreadPoolExecutor,
) -> None:
    table = Table({"alice": 1, "bob": 2})
    lookup = Batched(table.fetch, 0, executor)
    first = asyncio.create_task(lookup.get("alice"))
    await first_query_running(table)
    gone = asyncio.create_task(lookup.get("bob"))
    stays = asyncio.create_task(lookup.get("bob"))
    await asyncio.sleep(0)
    gone.cancel()
    table.release.set()
    assert list(await asyncio.wait_for(asyncio.gather(first, stays), WAIT)) == [1, 2]
    assert gone.cancelled()


async def test_callers_are_not_left_waiting_when_the_batching_task_is_cancelled(
    executor: ThreadPoolExecutor,
) -> None:
    table = Table({"alice": 1})
    lookup = Batched(table.fetch, 0, executor)
    first = asyncio.create_task(lookup.get("alice"))
    await first_query_running(table)
    waiting = asyncio.create_task(lookup.get("bob"))
    await asyncio.sleep(0)
    runner = lookup._runner  # the process is stopping: its tasks are cancelled
    assert runner is not None
    runner.cancel()
    done, _ = await asyncio.wait({first, waiting}, timeout=WAIT)
    assert done == {first, waiting} and first.cancelled() and waiting.cancelled()
    table.release.set()
    # A later lookup starts a new batching task.
    assert await asyncio.wait_for(lookup.get("alice"), WAIT) == 1
