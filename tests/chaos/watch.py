"""A WebSocket client whose every frame is kept, so a fault test can count what arrived.

:class:`Watcher` reads in the background from the moment it connects: frames that
arrive while the test is busy elsewhere (restarting the broker, killing a replica) are
not missed, and afterwards the test counts them (``excel.done`` per task, ``run.output``
per run). Waits are on a condition with a timeout, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests.support.client import Client

Frame = dict[str, Any]
WAIT_S = 30.0


class Watcher:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.welcome = client.welcome
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.closed = False
        self._changed = asyncio.Condition()
        self._refs = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, token: str) -> Watcher:
        return cls(await Client.connect(port, token))

    async def _read(self) -> None:
        connection = self.client.connection
        while (message := await connection.read_message()) is not None:
            frame = orjson.loads(message)
            async with self._changed:
                self.frames.append(frame)
                self._changed.notify_all()
        async with self._changed:
            self.closed, self.close_code = True, connection.close_code
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = WAIT_S) -> Frame:
        """The first frame received so far or later that matches; fails if the socket closes."""
        async with self._changed:
            found: list[Frame] = []

            def ready() -> bool:
                found[:] = [frame for frame in self.frames if predicate(frame)][:1]
                return bool(found) or self.closed

            await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            if not found:
                raise ConnectionError(f"socket closed ({self.close_code}) before the frame came")
            return found[0]

    async def wait_closed(self, timeout: float = WAIT_S) -> int | None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.closed), timeout)
            return self.close_code

    async def request(self, frame: Frame, timeout: float = WAIT_S) -> Frame:
        """Send a frame with a fresh ``ref``; its ``ack`` or ``error``."""
        ref = f"w{next(self._refs)}"
        await self.client.send({**frame, "ref": ref})
        return await self.wait_for(
            lambda f: f.get("type") in {"ack", "error"} and f.get("ref") == ref, timeout
        )

    async def sync(self) -> None:
        """Wait until the edge has handled everything before: a message to oneself, acked.

        The edge reads no frame before ``open`` is done, so the pending notifications it
        replays after ``welcome`` all come before this ack.
        """
        me = f"user:{self.welcome['data']['user']}"
        ack = await self.request({"type": "message.send", "to": me, "data": {}})
        assert ack["type"] == "ack", ack

    def events(self, kind: str, **data: Any) -> list[Frame]:
        """Event frames of one type whose ``data`` has every given value, each id once, as
        a client de-duplicates them: an edge that lost the broker replays in band from a
        window before what it had delivered (docs/protocol.md 17.5)."""
        seen: set[str] = set()
        found = []
        for frame in self.frames:
            if "v" not in frame or frame["id"] in seen:
                continue
            seen.add(frame["id"])
            if frame.get("type") == kind and all(
                frame["data"].get(key) == value for key, value in data.items()
            ):
                found.append(frame)
        return found

    async def close(self) -> None:
        self.client.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


def is_event(kind: str, **data: Any) -> Callable[[Frame], bool]:
    return lambda frame: (
        "v" in frame and frame.get("type") == kind
        and all(frame["data"].get(key) == value for key, value in data.items())
    )


async def api(
    port: int, token: str, path: str, *, method: str = "GET", body: Any = None
) -> tuple[int, Any]:
    """One request to an edge's HTTP API: status and parsed JSON body."""
    request = HTTPRequest(
        f"http://127.0.0.1:{port}{path}", method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body=orjson.dumps(body) if body is not None else None,
        request_timeout=WAIT_S,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as exc:
        if exc.response is None:
            raise
        response = exc.response
    return response.code, orjson.loads(response.body) if response.body else None


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` (sync or async) with capped backoff until it returns something truthy.

    For state that has no event to wait on (a row in the database after a fault).
    """
    delay = 0.05

    async def poll() -> Any:
        nonlocal delay
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    try:
        return await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None
