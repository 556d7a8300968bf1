"""Reference-counted queue bindings, driven through a fake in-memory binder."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ws_edge.bindings import BindingTable

PROPERTY = settings(database=None, max_examples=150, deadline=None)


class BindFailed(RuntimeError):
    pass


class FakeBinder:
    """The broker's view of one queue's bindings, with checks on how it is driven."""

    def __init__(self, yields: int = 3) -> None:
        self.yields = yields
        self.bound: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.busy: set[str] = set()
        self.overlaps: list[str] = []
        self.fail_bind: set[str] = set()
        self.fail_unbind: set[str] = set()

    async def _enter(self, key: str) -> None:
        if key in self.busy:
            self.overlaps.append(key)
        self.busy.add(key)
        for _ in range(self.yields):
            await asyncio.sleep(0)

    async def bind(self, key: str) -> None:
        await self._enter(key)
        try:
            self.calls.append(("bind", key))
            if key in self.fail_bind:
                raise BindFailed(key)
            self.bound.add(key)
        finally:
            self.busy.discard(key)

    async def unbind(self, key: str) -> None:
        await self._enter(key)
        try:
            self.calls.append(("unbind", key))
            if key in self.fail_unbind:
                raise BindFailed(key)
            self.bound.discard(key)
        finally:
            self.busy.discard(key)


def make(yields: int = 3) -> tuple[FakeBinder, BindingTable, list[int]]:
    binder = FakeBinder(yields)
    changes: list[int] = []
    return binder, BindingTable(binder, changes.append), changes


# --- basics ---------------------------------------------------------------------------


async def test_first_retain_binds() -> None:
    binder, table, _ = make()
    await table.retain(["user.a"])
    assert binder.calls == [("bind", "user.a")]
    assert binder.bound == {"user.a"}
    assert table.bound == frozenset({"user.a"})
    assert table.holders("user.a") == 1


async def test_later_retains_do_not_bind_again() -> None:
    binder, table, _ = make()
    await table.retain(["user.a"])
    await table.retain(["user.a"])
    await table.retain(["user.a"])
    assert binder.calls == [("bind", "user.a")]
    assert table.holders("user.a") == 3


async def test_a_retain_of_bound_keys_is_complete_at_once() -> None:
    # A reconnecting user's group keys are usually bound already: its socket then waits
    # for its own key only, and a socket whose keys are all bound waits for nothing.
    binder, table, _ = make()
    await table.retain(["user.a", "group.g"])
    assert table.retain(["user.a", "group.g"]).done()
    pending = table.retain(["user.b", "group.g"])
    assert not pending.done()
    await pending
    assert binder.calls.count(("bind", "group.g")) == 1
    assert table.holders("group.g") == 3


async def test_retain_of_several_keys_completes_once_all_are_bound() -> None:
    binder, table, _ = make()
    await table.retain(["user.a", "group.g", "broadcast"])
    assert binder.bound == {"user.a", "group.g", "broadcast"}
    assert sorted(binder.calls) == [("bind", "broadcast"), ("bind", "group.g"), ("bind", "user.a")]


async def test_retain_of_no_keys_completes() -> None:
    binder, table, _ = make()
    await table.retain([])
    assert binder.calls == []


async def test_release_unbinds_only_on_the_last_holder() -> None:
    binder, table, _ = make()
    await table.retain(["user.a"])
    await table.retain(["user.a"])
    table.release(["user.a"])
    await table.drain()
    assert binder.bound == {"user.a"}
    assert table.holders("user.a") == 1
    assert ("unbind", "user.a") not in binder.calls
    table.release(["user.a"])
    await table.drain()
    assert binder.bound == set()
    assert table.bound == frozenset()
    assert table.holders("user.a") == 0
    assert binder.calls == [("bind", "user.a"), ("unbind", "user.a")]


async def test_release_removes_from_bound_at_once() -> None:
    binder, table, _ = make()
    await table.retain(["user.a"])
    table.release(["user.a"])
    await asyncio.sleep(0)
    assert "user.a" not in table.bound


async def test_rebind_after_full_release() -> None:
    binder, table, _ = make()
    await table.retain(["k"])
    table.release(["k"])
    await table.drain()
    await table.retain(["k"])
    assert binder.calls == [("bind", "k"), ("unbind", "k"), ("bind", "k")]
    assert binder.bound == {"k"}


async def test_keys_are_counted_independently() -> None:
    binder, table, _ = make()
    await table.retain(["a", "b"])
    await table.retain(["b"])
    table.release(["a", "b"])
    await table.drain()
    assert binder.bound == {"b"}
    assert table.holders("a") == 0
    assert table.holders("b") == 1


async def test_on_change_receives_the_bound_count() -> None:
    binder, table, changes = make()
    await table.retain(["a"])
    await table.retain(["b"])
    await table.retain(["a"])
    table.release(["a"])
    await table.drain()
    table.release(["a"])
    await table.drain()
    table.release(["b"])
    await table.drain()
    assert changes == [1, 2, 1, 0]


async def test_on_change_counts_bound_keys_not_held_keys() -> None:
    binder, table, changes = make()
    await table.retain(["a", "b", "c"])
    assert changes == [1, 2, 3]
    table.release(["a", "b"])
    await table.drain()
    assert changes == [1, 2, 3, 2, 1]


async def test_drain_with_nothing_pending_returns() -> None:
    _, table, _ = make()
    await asyncio.wait_for(table.drain(), 1)


# --- failures -------------------------------------------------------------------------


async def test_failing_bind_propagates_to_retain() -> None:
    binder, table, changes = make()
    binder.fail_bind.add("a")
    with pytest.raises(BindFailed):
        await table.retain(["a"])
    assert table.bound == frozenset()
    assert changes == []
    # The count stays taken until the matching release.
    assert table.holders("a") == 1


async def test_failing_bind_of_one_key_fails_the_whole_retain() -> None:
    binder, table, _ = make()
    binder.fail_bind.add("b")
    with pytest.raises(BindFailed):
        await table.retain(["a", "b"])
    await table.drain()
    assert table.bound == frozenset({"a"})


async def test_release_after_failed_bind_does_not_unbind() -> None:
    binder, table, _ = make()
    binder.fail_bind.add("a")
    with pytest.raises(BindFailed):
        await table.retain(["a"])
    table.release(["a"])
    await table.drain()
    assert binder.calls == [("bind", "a")]
    assert table.holders("a") == 0


async def test_next_retain_after_failed_bind_binds_again() -> None:
    binder, table, _ = make()
    binder.fail_bind.add("a")
    with pytest.raises(BindFailed):
        await table.retain(["a"])
    binder.fail_bind.clear()
    await table.retain(["a"])
    assert binder.bound == {"a"}
    assert table.bound == frozenset({"a"})


async def test_second_waiting_retain_retries_after_the_first_bind_fails() -> None:
    binder, table, _ = make()
    binder.fail_bind.add("a")
    first = table.retain(["a"])
    second = table.retain(["a"])

    async def heal_after_first() -> None:
        while ("bind", "a") not in binder.calls:
            await asyncio.sleep(0)
        binder.fail_bind.clear()

    results = await asyncio.gather(first, second, heal_after_first(), return_exceptions=True)
    assert isinstance(results[0], BindFailed)
    assert results[1] == [None]
    assert binder.bound == {"a"}


async def test_failing_unbind_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    binder, table, changes = make()
    await table.retain(["a"])
    binder.fail_unbind.add("a")
    with caplog.at_level(logging.WARNING, logger="services.ws_edge.bindings"):
        table.release(["a"])
        await table.drain()
    assert table.bound == frozenset()
    assert changes == [1, 0]
    assert any("unbind failed" in r.getMessage() for r in caplog.records)


# --- concurrency ----------------------------------------------------------------------


async def test_retain_release_retain_before_anything_runs_ends_bound() -> None:
    binder, table, _ = make()
    table.retain(["a"])
    table.release(["a"])
    last = table.retain(["a"])
    await last
    await table.drain()
    assert binder.bound == {"a"}
    assert table.bound == frozenset({"a"})
    assert binder.overlaps == []


async def test_release_while_bind_is_in_flight_ends_unbound() -> None:
    binder, table, _ = make(yields=10)
    pending = table.retain(["a"])
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert binder.busy == {"a"}
    table.release(["a"])
    await pending
    await table.drain()
    assert binder.bound == set()
    assert table.bound == frozenset()
    assert binder.overlaps == []


async def test_retain_while_unbind_is_in_flight_ends_bound() -> None:
    binder, table, _ = make(yields=10)
    await table.retain(["a"])
    table.release(["a"])
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert binder.busy == {"a"}
    await table.retain(["a"])
    assert binder.bound == {"a"}
    await table.drain()
    assert binder.bound == {"a"}
    assert table.bound == frozenset({"a"})
    assert binder.overlaps == []


async def test_rapid_flapping_converges_without_overlap() -> None:
    binder, table, _ = make(yields=4)
    for _ in range(50):
        table.retain(["a"])
        await asyncio.sleep(0)
        table.release(["a"])
    await table.drain()
    assert binder.bound == set()
    assert table.bound == frozenset()
    assert binder.overlaps == []
    for _ in range(50):
        if table.holders("a"):
            table.release(["a"])
        table.retain(["a"])
        await asyncio.sleep(0)
    await table.drain()
    assert binder.bound == {"a"}
    assert table.holders("a") == 1
    assert binder.overlaps == []


async def _client(
    table: BindingTable,
    binder: FakeBinder,
    keys: list[str],
    before: int,
    held: int,
    keep: bool,
    outages: bool = False,
) -> None:
    for _ in range(before):
        await asyncio.sleep(0)
    retained = table.retain(keys)
    await retained
    # The retain awaitable completes only once the broker has every key bound (unless a
    # new connection came in the turn between its completion and this check).
    assert outages or set(keys) <= binder.bound
    for _ in range(held):
        await asyncio.sleep(0)
    if not keep:
        table.release(keys)


async def _run_clients(
    plan: list[tuple[list[str], int, int, bool]], yields: int
) -> tuple[FakeBinder, BindingTable, dict[str, int]]:
    binder, table, _ = make(yields)
    await asyncio.gather(*(_client(table, binder, *p) for p in plan))
    await table.drain()
    wanted: dict[str, int] = {}
    for keys, _before, _held, keep in plan:
        if keep:
            for key in keys:
                wanted[key] = wanted.get(key, 0) + 1
    return binder, table, wanted


def _assert_converged(binder: FakeBinder, table: BindingTable, wanted: dict[str, int]) -> None:
    assert binder.overlaps == []
    assert binder.busy == set()
    assert binder.bound == set(wanted)
    assert table.bound == frozenset(wanted)
    for key in {k for _, k in binder.calls}:
        assert table.holders(key) == wanted.get(key, 0)
    assert len(table._locks) == 0  # no key's lock outlives its calls


@pytest.mark.parametrize("seed", range(40))
async def test_many_random_interleavings_converge(seed: int) -> None:
    rng = random.Random(seed)
    keys = ["user.a", "user.b", "group.g", "broadcast"]
    plan = [
        (
            rng.sample(keys, rng.randint(1, 3)),
            rng.randint(0, 12),
            rng.randint(0, 12),
            rng.random() < 0.3,
        )
        for _ in range(rng.randint(5, 40))
    ]
    binder, table, wanted = await _run_clients(plan, yields=rng.randint(0, 5))
    _assert_converged(binder, table, wanted)


async def test_all_clients_leaving_leaves_nothing_bound() -> None:
    plan = [(["user.a", "group.g"], i % 7, (i * 3) % 11, False) for i in range(100)]
    binder, table, wanted = await _run_clients(plan, yields=3)
    assert wanted == {}
    _assert_converged(binder, table, wanted)


plans = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["k1", "k2", "k3"]), min_size=1, max_size=3, unique=True),
        st.integers(0, 8),
        st.integers(0, 8),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


@PROPERTY
@given(plans, st.integers(0, 4))
def test_any_interleaving_converges(
    plan: list[tuple[list[str], int, int, bool]], yields: int
) -> None:
    binder, table, wanted = asyncio.run(_run_clients(plan, yields))
    _assert_converged(binder, table, wanted)


# --- a new connection: rebind ---------------------------------------------------------


async def test_rebind_binds_every_held_key_again() -> None:
    binder, table, changes = make()
    await table.retain(["user.a", "group.g"])
    await table.retain(["user.b"])
    table.release(["user.b"])
    await table.drain()
    binder.bound.clear()  # the broker connection was replaced: a new, empty queue
    table.rebind()
    assert table.bound == frozenset()
    await table.drain()
    assert binder.bound == {"user.a", "group.g"}
    assert table.bound == frozenset({"user.a", "group.g"})
    assert changes[-1] == 2


async def test_keys_are_bound_again_in_a_new_generation_after_a_rebind() -> None:
    binder, table, _ = make()
    await table.retain(["user.a", "group.g"])
    first = table.generation
    assert table.are_bound(["user.a", "group.g"]) and not table.are_bound(["user.a", "user.b"])
    binder.bound.clear()
    rebound = table.rebind()
    assert table.generation == first + 1
    assert not table.are_bound(["user.a"])  # until bound to the new queue
    await table.settle(["user.a"])
    assert table.are_bound(["user.a"])
    await rebound
    assert table.are_bound(["user.a", "group.g"]) and table.generation == first + 1
    assert binder.calls.count(("bind", "user.a")) == 2  # settle waited, it bound nothing more


async def test_settle_binds_a_held_key_whose_bind_failed_without_counting_a_holder() -> None:
    binder, table, _ = make()
    binder.fail_bind.add("user.a")
    with pytest.raises(BindFailed):
        await table.retain(["user.a"])
    binder.fail_bind.clear()
    await table.settle(["user.a"])
    assert table.are_bound(["user.a"]) and table.holders("user.a") == 1
    await table.settle(["user.a"])  # bound: nothing to do
    assert binder.calls.count(("bind", "user.a")) == 2


async def test_a_key_released_while_its_bind_straddles_a_new_connection_ends_unbound() -> None:
    binder, table, _ = make(yields=5)
    retained = asyncio.ensure_future(table.retain(["user.a"]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert binder.busy == {"user.a"}  # the bind is on its way...
    binder.bound.clear()  # ...the connection is replaced, and it lands on the new queue
    table.rebind()
    table.release(["user.a"])
    await retained
    await table.drain()
    assert binder.bound == set()
    assert table.bound == frozenset()
    assert binder.overlaps == []


async def _replace_connection(table: BindingTable, binder: FakeBinder, before: int) -> None:
    for _ in range(before):
        await asyncio.sleep(0)
    binder.bound.clear()
    table.rebind()


@pytest.mark.parametrize("seed", range(40))
async def test_interleavings_with_new_connections_converge(seed: int) -> None:
    rng = random.Random(seed)
    keys = ["user.a", "user.b", "group.g"]
    plan = [
        (rng.sample(keys, rng.randint(1, 3)), rng.randint(0, 12), rng.randint(0, 12), rng.random() < 0.4)
        for _ in range(rng.randint(5, 30))
    ]
    binder, table, _ = make(rng.randint(0, 5))
    await asyncio.gather(
        *(_client(table, binder, *p, outages=True) for p in plan),
        *(_replace_connection(table, binder, rng.randint(0, 30)) for _ in range(rng.randint(1, 3))),
    )
    await table.drain()
    wanted: dict[str, int] = {}
    for chosen, _before, _held, keep in plan:
        for key in chosen if keep else ():
            wanted[key] = wanted.get(key, 0) + 1
    _assert_converged(binder, table, wanted)
