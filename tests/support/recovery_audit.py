"""What an application received through ``warren.client`` against what was published
to its keys: lost, repeated, foreign and disordered events (tests of recovery, one edge
cut or killed under a steady feed)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass

from shared.messaging import Address, Envelope
from tests.support.edge import EdgeProcess
from tests.support.history import Feed
from warren.client import Client, Event

TIMEOUT = 30.0


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws"


async def instance_of(edge: EdgeProcess) -> str:
    """The instance id the edge puts in its ``welcome``."""
    return str((await edge.wait_log("edge ready"))["instance"])


class Watch:
    """Wakes whoever waits for a condition when something it reads may have changed:
    an event received, an event published, a state reached."""

    def __init__(self) -> None:
        self._changed: asyncio.Future[None] | None = None

    def poke(self, *_args: object) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def until(self, check: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Whether ``check()`` held within ``timeout``, evaluated after each poke."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._changed is None or self._changed.done():
                self._changed = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
            except TimeoutError:
                return check()
        return True

    async def expect(self, check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        if not await self.until(check, timeout):
            raise AssertionError(f"not within {timeout:g} s: {what}")


class Inbox:
    """What one client's application receives: every event, in order."""

    def __init__(self, client: Client, watch: Watch) -> None:
        self.client = client
        self.events: list[Event] = []
        self.ids: set[str] = set()
        self._watch = watch
        self._reader = asyncio.create_task(self._read(client.events()))

    async def _read(self, events: AsyncIterator[Event]) -> None:
        async for event in events:
            self.events.append(event)
            self.ids.add(event.id)
            self._watch.poke()

    def has_all(self, expected: Collection[Envelope]) -> bool:
        return all(envelope.id in self.ids for envelope in expected)


async def steady(
    feed: Feed, addresses: Sequence[Address], rate: float, stop: asyncio.Event, watch: Watch
) -> None:
    """Publish to ``addresses`` in turn, ``rate`` events a second, until ``stop``.

    The pause between publishes sets the rate; nothing waits on it. Behind schedule (a
    busy machine), it publishes at once until it is back on it."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in itertools.count():
        if stop.is_set():
            return
        ahead = start + n / rate - loop.time()
        if ahead > 0:
            await asyncio.sleep(ahead)
        await feed.publish(addresses[n % len(addresses)])
        watch.poke()


def addressed(published: Sequence[Envelope], keys: Collection[str]) -> list[Envelope]:
    return [envelope for envelope in published if str(envelope.to) in keys]


@dataclass(frozen=True)
class Audit:
    """One application's events against what was published to its keys."""

    lost: int
    repeated: int
    foreign: int  # events of keys it does not hold, or never published
    disordered: tuple[str, ...]  # keys whose events came in another order than published

    @property
    def ok(self) -> bool:
        return not (self.lost or self.repeated or self.foreign or self.disordered)


def audit(received: Sequence[Event], published: Sequence[Envelope], keys: Collection[str]) -> Audit:
    expected = addressed(published, keys)
    counts = Counter(event.id for event in received)
    expected_ids = {envelope.id for envelope in expected}
    disordered = tuple(
        key for key in sorted(keys)
        if [e.data["n"] for e in received if e.to == key]
        != [e.data["n"] for e in expected if str(e.to) == key]
    )
    return Audit(
        lost=sum(1 for envelope in expected if envelope.id not in counts),
        repeated=sum(count - 1 for count in counts.values()),
        foreign=sum(count for id_, count in counts.items() if id_ not in expected_ids),
        disordered=disordered,
    )
