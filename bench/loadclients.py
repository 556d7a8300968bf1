"""Client driver workers: the processes that hold the bench's WebSocket clients.

Driver side: open a client within a deadline, close many at once, bin latencies for a
reply. Orchestrator side: :class:`DriverPool`, the driver processes, each given its share
of the clients (see :mod:`bench.rpc` for the requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.rpc import Worker
from bench.stats import Histogram
from bench.wsclient import WsClient

C = TypeVar("C", bound=WsClient)


# -- driver side ---------------------------------------------------------------------


async def open_client(client: C, port: int, timeout_s: float) -> C:
    """Connect ``client`` to the server on 127.0.0.1 and wait until it is ready, each
    within ``timeout_s``; a client that fails is aborted."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: client, "127.0.0.1", port), timeout_s
        )
        await asyncio.wait_for(client.ready, timeout_s)
    except BaseException:
        client.abort()
        raise
    return client


async def close_clients(clients: Sequence[WsClient], timeout_s: float) -> dict[str, int]:
    """Close every client and wait (bounded) until their connections are gone; those
    still there then are aborted."""
    for client in clients:
        client.close()
    lost = [c.lost for c in clients]
    if lost:
        await asyncio.wait(lost, timeout=timeout_s)
    lingering = [c for c in clients if not c.lost.done()]
    for client in lingering:
        client.abort()
    return {"closed": len(clients) - len(lingering), "aborted": len(lingering)}


def sparse_histogram(seconds: Iterable[float]) -> dict[str, int]:
    """Latencies binned, in the JSON form a reply carries (:meth:`Histogram.to_sparse`)."""
    histogram = Histogram()
    for value in seconds:
        histogram.add(value)
    return histogram.to_sparse()


# -- orchestrator side ---------------------------------------------------------------


def slices(count: int, parts: int) -> list[tuple[int, int]]:
    """``range(count)`` cut into ``parts`` runs ``(first, last)`` as even as can be."""
    return list(itertools.pairwise(count * i // parts for i in range(parts + 1)))


class DriverPool:
    """``count`` driver workers ``python -m <module> <args>``, named ``<name>0`` on."""

    def __init__(self, name: str, module: str, args: Sequence[str], count: int,
                 logs: Path) -> None:
        self.workers = [Worker(f"{name}{i}", module, args, logs / f"{name}{i}.log")
                        for i in range(count)]

    def __len__(self) -> int:
        return len(self.workers)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def shares(self, total: int) -> list[dict[str, int]]:
        """Each driver's part of ``total`` clients, as the ``first`` and ``last`` of a request."""
        return [{"first": first, "last": last} for first, last in slices(total, len(self))]

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self.workers))

    async def call_all(self, cmd: str, timeout: float, **params: Any) -> list[dict[str, Any]]:
        """The same request to every driver at once; their replies in order."""
        return list(await asyncio.gather(*(w.call(cmd, timeout, **params) for w in self.workers)))

    async def call_each(self, cmd: str, timeout: float, each: Sequence[Mapping[str, Any]],
                        **params: Any) -> list[dict[str, Any]]:
        """``cmd`` to every driver at once, driver ``i`` with ``params`` and ``each[i]``."""
        return list(await asyncio.gather(*(
            worker.call(cmd, timeout, **params, **own)
            for worker, own in zip(self.workers, each, strict=True)
        )))

    async def stop(self) -> None:
        """Stop every driver, each even if another fails."""
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.stop()
