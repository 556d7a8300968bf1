"""A thin WebSocket test client over Tornado's client: JSON in, JSON out, with timeouts."""

from __future__ import annotations

import asyncio
import base64
from collections import deque
from typing import Any

import orjson
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

#: The headers of a WebSocket upgrade, for tests that send it as a plain HTTP request to
#: see how the edge refuses it.
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}

TIMEOUT = 10.0


class Client:
    def __init__(self, connection: WebSocketClientConnection) -> None:
        self.connection = connection
        self.welcome: dict[str, Any] = {}
        # Frames read while waiting for a reply to a request, kept for recv() in order:
        # an event can reach the socket before the ack of the request that caused it.
        self.pending: deque[dict[str, Any]] = deque()

    @classmethod
    async def connect(
        cls, port: int, token: str, *, via: str = "query", expect_welcome: bool = True,
        query: str = "",
    ) -> Client:
        """``query``: more of the URL's query string, as it is (``since=...``, or anything
        a hostile client puts there)."""
        url = f"ws://127.0.0.1:{port}/ws"
        headers: dict[str, str] = {}
        subprotocols: list[str] | None = None
        if via == "query":
            url += f"?token={token}"
        elif via == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif via == "cookie":
            headers["Cookie"] = f"warren_token={token}"
        elif via == "subprotocol":
            subprotocols = ["warren.v1", f"warren.auth.{token}"]
        if query:
            url += ("&" if "?" in url else "?") + query
        connection = await asyncio.wait_for(
            websocket_connect(HTTPRequest(url, headers=headers), max_message_size=8 << 20,
                              subprotocols=subprotocols),
            TIMEOUT,
        )
        client = cls(connection)
        if expect_welcome:
            client.welcome = await client.recv()
            assert client.welcome["type"] == "welcome", client.welcome
        return client

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if self.pending:
            return self.pending.popleft()
        return await self._read(timeout)

    async def _read(self, timeout: float) -> dict[str, Any]:
        message = await asyncio.wait_for(self.connection.read_message(), timeout)
        if message is None:
            raise ConnectionError(
                f"closed: {self.connection.close_code} {self.connection.close_reason}"
            )
        parsed = orjson.loads(message)
        assert isinstance(parsed, dict)
        return parsed

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = orjson.dumps(frame).decode()
        await self.connection.write_message(frame, binary=isinstance(frame, bytes))

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame and return the ack or error with its ref; other frames stay for recv()."""
        await self.send(frame)
        while True:
            reply = await self._read(TIMEOUT)
            if reply.get("type") in {"ack", "error"} and reply.get("ref") == frame.get("ref"):
                return reply
            self.pending.append(reply)

    async def closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
        """Wait until the server closes the socket; return its close code and reason."""
        async def drain() -> None:
            while await self.connection.read_message() is not None:
                pass

        await asyncio.wait_for(drain(), timeout)
        return self.connection.close_code, self.connection.close_reason

    def close(self) -> None:
        self.connection.close()
