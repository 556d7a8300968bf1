"""Lookups by key, asked of the database together: one query for many callers.

A reconnect storm brings hundreds of sockets a second, each needing the same read (does
its user still exist, has it notifications pending: services/ws_edge/admission.py). One
read each would cost more than the rest of the handshake, and each would take one of the
blocking executor's threads. :class:`Batched` runs one fetch at a time: the keys asked
for while it runs wait for it to end and then go together in the next one. A lone lookup
costs one fetch and waits for no timer; under a storm the batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Final, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Keys in one query at most (an ``IN (...)`` list's bind parameters).
MOST_KEYS: Final = 500


class Batched(Generic[K, V]):
    """``fetch(keys)`` on ``executor`` for many :meth:`get` calls at once.

    ``fetch`` returns a value for each key it found; a key it leaves out gets ``missing``.
    An error of ``fetch`` is raised to every caller whose key was in that query.
    """

    def __init__(
        self, fetch: Callable[[Sequence[K]], Mapping[K, V]], missing: V, executor: Executor
    ) -> None:
        self._fetch = fetch
        self._missing = missing
        self._executor = executor
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        batch: dict[K, list[asyncio.Future[V]]] = {}
        try:
            while self._waiting:
                batch = {key: self._waiting.pop(key)
                         for key in list(itertools.islice(self._waiting, MOST_KEYS))}
                try:
                    found = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._fetch, list(batch)
                    )
                except Exception as exc:
                    _settle(batch.values(), lambda future: future.set_exception(exc))
                else:
                    for key, futures in batch.items():
                        value = found.get(key, self._missing)
                        _settle((futures,), lambda future: future.set_result(value))
                batch = {}
        finally:
            # Cancelled (the process is stopping) or broken: no caller is left waiting.
            self._runner = None
            _settle((*batch.values(), *self._waiting.values()), lambda future: future.cancel())
            self._waiting.clear()


def _settle(
    groups: Iterable[list[asyncio.Future[V]]], settle: Callable[[asyncio.Future[V]], object]
) -> None:
    for futures in groups:
        for future in futures:
            if not future.done():  # a caller that gave up (its socket closed) is skipped
                settle(future)
