"""Reference-counted queue bindings: bound on the first holder, unbound on the last.

Per key, bind and unbind calls are serialised by a lock (``shared.locks.KeyedLocks``) and
always move the broker towards the current wanted state, so rapid open/close sequences
converge. After the broker connection is replaced (the edge's exclusive queue is then a
new one, holding only what the consumer declares itself), :meth:`BindingTable.rebind`
binds every held key again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from shared.locks import KeyedLocks

log = logging.getLogger(__name__)


class Binder(Protocol):
    async def bind(self, key: str) -> None: ...
    async def unbind(self, key: str) -> None: ...


class BindingTable:
    def __init__(self, binder: Binder, on_change: Callable[[int], None] = lambda _n: None) -> None:
        self._binder = binder
        self._on_change = on_change
        self._counts: dict[str, int] = {}
        self._bound: set[str] = set()
        self._locks = KeyedLocks()
        self._tasks: set[asyncio.Task[None]] = set()
        self._generation = 0  # bumped by rebind(): a bind from before it may not count

    @property
    def bound(self) -> frozenset[str]:
        return frozenset(self._bound)

    @property
    def unbound(self) -> frozenset[str]:
        """Keys held but not bound now: a bind pending, or one that failed."""
        return frozenset(key for key in self._counts if key not in self._bound)

    @property
    def generation(self) -> int:
        """Bumped by every :meth:`rebind`: keys bound in one generation missed the events
        routed between the loss of its queue and their binding in a later one."""
        return self._generation

    def are_bound(self, keys: Iterable[str]) -> bool:
        """Whether every one of ``keys`` is bound to the current queue now."""
        return all(key in self._bound for key in keys)

    def settle(self, keys: Iterable[str]) -> asyncio.Future[list[None]]:
        """Complete once every one of ``keys``, all held, is bound (at once, when they all
        are already); as :meth:`retain`, without counting a holder."""
        return asyncio.gather(*(self._schedule(key) for key in keys if key not in self._bound))

    def holders(self, key: str) -> int:
        return self._counts.get(key, 0)

    def retain(self, keys: Iterable[str]) -> asyncio.Future[list[None]]:
        """Count one more holder of each key; the result completes once all are bound
        (at once, when they all are already).

        The counts are taken at once; cancelling the returned awaitable does not undo
        them, so every ``retain`` must be matched by one ``release``.
        """
        tasks = []
        for key in keys:
            self._counts[key] = self._counts.get(key, 0) + 1
            # A key in _bound is bound on the broker, and stays so: an unbind takes it
            # out of _bound before it starts, and any call still queued for it sees the
            # count just taken. Only the others need a call (or one in flight) to wait on.
            if key not in self._bound:
                tasks.append(self._schedule(key))
        return asyncio.gather(*tasks)

    def release(self, keys: Iterable[str]) -> None:
        for key in keys:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)
                self._schedule(key)

    def rebind(self) -> asyncio.Future[list[BaseException | None]]:
        """The queue lost its bindings (a new connection): bind every held key again.

        The result completes once every held key has been bound again, or has failed to
        be (the failures are in it, and logged by whoever retains the key next)."""
        self._generation += 1
        self._bound.clear()
        self._on_change(0)
        return asyncio.gather(*(self._schedule(key) for key in list(self._counts)),
                              return_exceptions=True)

    async def drain(self) -> None:
        """Wait for every pending bind and unbind."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _schedule(self, key: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._sync(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sync(self, key: str) -> None:
        async with self._locks.hold(key):
            await self._converge(key)

    async def _converge(self, key: str) -> None:
        """Bind or unbind ``key`` as wanted now; called with the key's lock held."""
        # Once rebind() has run during a call, the call may have reached the lost
        # queue or the new one: the key's state on the broker is unknown, so it is
        # settled again with a call either way (both are idempotent on the broker).
        unknown = False
        while True:
            generation = self._generation
            wanted = self._counts.get(key, 0) > 0
            if wanted and (unknown or key not in self._bound):
                await self._binder.bind(key)
                if generation == self._generation:
                    self._bound.add(key)
                    self._on_change(len(self._bound))
                    return
            elif not wanted and (unknown or key in self._bound):
                self._bound.discard(key)
                self._on_change(len(self._bound))
                try:
                    await self._binder.unbind(key)
                except Exception:
                    # Binding left behind: at worst this edge receives and drops
                    # traffic for a key it no longer holds; the next holder rebinds.
                    log.warning("unbind failed", extra={"key": key}, exc_info=True)
                    return
                if generation == self._generation:
                    return
            else:
                return
            unknown = True
