"""Steady events from the bench publisher to a set of users, their groups and
``broadcast``, recorded step by step so that what each client should have received can be
checked; the publisher process; and the users with their tokens."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from bench.rpc import Worker
from shared.auth import AuthSettings, TokenService

CALL_TIMEOUT_S: Final = 60.0
CHUNK_S: Final = 2.0  # the traffic is published in steps of this length, back to back


def make_clients(prefix: str, count: int, groups: int) -> list[dict[str, Any]]:
    """Users ``<prefix>00000..`` in groups ``<prefix>g000..`` round robin, with tokens."""
    tokens = TokenService(AuthSettings.from_env({"WARREN_ENV": "development"}, development=True))
    entries = []
    for i in range(count):
        user, group = f"{prefix}{i:05d}", f"{prefix}g{i % groups:03d}"
        entries.append({"user": user, "groups": [group],
                        "token": tokens.issue(user, (group,), (), ttl_s=7200)})
    return entries


class Traffic:
    """The publisher's steady events, in back-to-back steps of ``CHUNK_S`` per kind, until
    stopped; every step's count is kept, to check what the clients received."""

    def __init__(self, publisher: Worker, rates: dict[str, float],
                 targets: dict[str, list[str]], max_in_flight: int = 256) -> None:
        self._publisher = publisher
        self._max_in_flight = max_in_flight
        self._rates = {kind: rate for kind, rate in rates.items() if rate > 0}
        self.targets = targets
        self.steps: list[dict[str, Any]] = []
        self.failed = 0
        self._numbers = itertools.count(1)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(kind, rate))
                       for kind, rate in self._rates.items()]

    async def _loop(self, kind: str, rate: float) -> None:
        """Steps one after another; each goes on round the targets where the last one
        stopped (its ``offset``), so that every target gets its share."""
        targets = self.targets.get(kind, [])
        offset = 0
        while not self._stop.is_set():
            step = next(self._numbers)
            reply = await self._publisher.call(
                "run", CHUNK_S + CALL_TIMEOUT_S, step=step, kind=kind,
                targets=targets[offset:] + targets[:offset], rate=rate, duration_s=CHUNK_S,
                max_in_flight=self._max_in_flight,
            )
            sent = int(reply["sent"])
            self.steps.append({"step": step, "kind": kind, "sent": sent, "offset": offset})
            self.failed += int(reply["failed"])
            offset = (offset + sent) % len(targets) if targets else 0

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)

    @property
    def published(self) -> int:
        return sum(int(s["sent"]) for s in self.steps)


class PublisherProcess:
    """``python -m bench.publisher``, publishing to one vhost with the history
    settings of the edges it feeds."""

    def __init__(self, logs: Path, lifetime_s: float) -> None:
        self.worker = Worker("publisher", "bench.publisher",
                             ["--lifetime", str(lifetime_s)], logs / "publisher.log")

    @property
    def pid(self) -> int:
        return self.worker.pid

    async def start(self, amqp_url: str, settings: Mapping[str, str]) -> None:
        await self.worker.start()
        await self.worker.call("open", CALL_TIMEOUT_S, system="warren", amqp_url=amqp_url,
                               settings=dict(settings))

    async def stop(self) -> None:
        """Close its connection and let it exit, even if one of the two fails."""
        with contextlib.suppress(Exception):
            await self.worker.call("close", CALL_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await self.worker.stop()
