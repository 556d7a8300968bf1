"""Every frame one raw test socket receives, with the time it arrived, read in the
background, and waits for a condition on them (never a sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.support.client import Client
from tests.support.history import is_event

Frame = dict[str, Any]


@dataclass
class Arrivals:
    """Reads ``client``'s frames from its creation on (``welcome`` is already read)."""

    client: Client
    frames: list[tuple[float, Frame]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (message := await self.client.connection.read_message()) is not None:
            self.frames.append((time.monotonic(), orjson.loads(message)))
            self.changed.set()
        self.closed.set()
        self.changed.set()

    def events(self) -> list[tuple[float, Frame]]:
        return [(at, frame) for at, frame in self.frames if is_event(frame)]

    def of_type(self, frame_type: str) -> list[Frame]:
        """The edge's own frames of one type (events excluded)."""
        return [frame for _at, frame in self.frames
                if not is_event(frame) and frame.get("type") == frame_type]

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        async def wait() -> None:
            while not condition():
                assert not self.closed.is_set(), (
                    f"the socket closed waiting for {what}: {self.client.connection.close_code} "
                    f"{self.client.connection.close_reason}")
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"not within {timeout} s: {what}") from None
