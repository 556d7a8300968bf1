"""A test double of a Cheshire Cat 1.x server, faithful to its wire protocol.

- ``GET /`` answers ``{"status": "We're all mad here, dear!", "version": "1.x"}``.
- ``POST /message`` (``Authorization: Bearer <key>``, ``user_id`` header) answers the
  reply object.
- ``/ws/{user_id}[?token=<key>]`` takes ``{"text": ...}`` and answers with
  ``chat_token`` frames, then the final ``chat`` frame; failures are ``error`` frames.
- Like the real server it keeps ONE socket per user id: a newer socket replaces the
  older one, and replies go to the newest socket, whichever socket asked. Non-JSON
  input drops the socket without a close code.

Texts steer it: ``!error`` answers an error frame, ``!hold`` waits until the test
releases ``hold`` (or stops the server), ``!notify`` sends a notification first,
``!no-llm`` answers as a Cat with no language model configured does (its placeholder
model's fixed sentence, in the final frame only).

Not part of the protocol, for tests and benchmarks: ``pace_s`` spaces the frames of an
answer out like a streaming model; the double counts asks in progress per user
(``max_busy``) and sets ``closed[user]`` when a user's socket closes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import tornado.web
import tornado.websocket
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

V1_STATUS = {"status": "We're all mad here, dear!", "version": "1.8.1"}
NO_LLM_REPLY = "You did not configure a Language Model. Do it in the settings!"


def reply_for(text: str) -> str:
    return f"You said: {text}"


def reply_frame(user_id: str, text: str, reply: str | None = None) -> dict[str, Any]:
    reply = reply_for(text) if reply is None else reply
    return {
        "type": "chat", "user_id": user_id, "text": reply, "content": reply,
        "when": time.time(), "who": "AI", "why": {"input": text, "intermediate_steps": []},
    }


class CatV1Double:
    def __init__(
        self, *, api_key: str = "", token_size: int = 3, port: int = 0, pace_s: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.token_size = token_size
        self.port = port
        self.pace_s = pace_s
        self.hold = asyncio.Event()
        self.holding = asyncio.Event()  # set while an ask waits on ``hold``
        self.sockets: dict[str, CatSocket] = {}  # user id -> newest socket
        self.open_count: Counter[str] = Counter()  # user id -> open sockets now
        self.max_open: Counter[str] = Counter()  # user id -> most sockets open at once
        self.asks: defaultdict[str, list[str]] = defaultdict(list)
        self.busy: Counter[str] = Counter()  # user id -> asks being answered now
        self.max_busy: Counter[str] = Counter()  # user id -> most asks answered at once
        self.closed: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.peer_ports: dict[str, int] = {}  # user id -> client port of the newest socket
        self.dropped = 0
        self.served: dict[str, float] = {}  # ask text -> seconds from receipt to the last frame
        # ask text -> (receipt, last frame written), time.perf_counter(): CLOCK_MONOTONIC on
        # Linux, so other processes of this host can compare their own readings with them
        self.spans: dict[str, tuple[float, float]] = {}
        self._server: HTTPServer | None = None
        self._all: set[CatSocket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CatV1Double:
        app = tornado.web.Application(
            [
                (r"/", StatusHandler),
                (r"/message", MessageHandler, {"cat": self}),
                (r"/stats", StatsHandler, {"cat": self}),
                (r"/ws/([^/]+)", CatSocket, {"cat": self}),
            ]
        )
        sockets = bind_sockets(self.port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(app)
        self._server.add_sockets(sockets)
        return self

    async def stop(self) -> None:
        """Stop as a crashed Cat would: refuse connections, drop every socket abruptly."""
        if self._server is not None:
            self._server.stop()
            for socket in list(self._all):
                socket.drop()
            await self._server.close_all_connections()
            self._server = None

    def authorised(self, token: str | None) -> bool:
        return not self.api_key or token == self.api_key

    async def answer(self, user_id: str, text: str) -> list[dict[str, Any]]:
        """The frames the Cat sends for one ask, after waiting where the text says so."""
        self.asks[user_id].append(text)
        if text == "!hold":
            self.holding.set()
            await self.hold.wait()
        if text == "!error":
            return [{"type": "error", "name": "LLMError", "description": "the model failed"}]
        if text == "!no-llm":
            return [reply_frame(user_id, text, NO_LLM_REPLY)]
        frames: list[dict[str, Any]] = []
        if text == "!notify":
            frames.append({"type": "notification", "content": "plugin says hello"})
        reply = reply_for(text)
        for start in range(0, len(reply), self.token_size):
            frames.append({"type": "chat_token", "content": reply[start:start + self.token_size]})
        frames.append(reply_frame(user_id, text))
        return frames


class StatusHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(V1_STATUS)


class StatsHandler(tornado.web.RequestHandler):
    """Not part of the Cat protocol: how long the double spent on each ask (benchmarks)."""

    def initialize(self, cat: CatV1Double) -> None:
        self.cat = cat

    def get(self) -> None:
        self.write({"served": self.cat.served, "spans": self.cat.spans})


class MessageHandler(tornado.web.RequestHandler):
    def initialize(self, cat: CatV1Double) -> None:
        self.cat = cat

    async def post(self) -> None:
        _, _, key = self.request.headers.get("Authorization", "").partition(" ")
        if not self.cat.authorised(key or None):
            self.set_status(403)
            self.write({"detail": {"error": "Invalid Credentials"}})
            return
        user_id = self.request.headers.get("user_id", "user")
        text = orjson.loads(self.request.body).get("text", "")
        frames = await self.cat.answer(user_id, text)
        self.write(frames[-1])


class CatSocket(tornado.websocket.WebSocketHandler):
    def initialize(self, cat: CatV1Double) -> None:
        self.cat = cat
        self.user_id = ""

    def prepare(self) -> None:
        if not self.cat.authorised(self.get_query_argument("token", None)):
            self.set_status(403)
            self.finish({"detail": {"error": "Invalid Credentials"}})

    def open(self, user_id: str) -> None:
        self.user_id = user_id
        self.set_nodelay(True)  # as a real server does: small frames go out at once
        self.cat.sockets[user_id] = self  # the newest socket takes the user's replies
        # Which relay process holds the socket: its local port is this peer port.
        assert self.ws_connection is not None
        stream = self.ws_connection.stream
        assert stream is not None and stream.socket is not None
        self.cat.peer_ports[user_id] = stream.socket.getpeername()[1]
        self.cat._all.add(self)
        self.cat.open_count[user_id] += 1
        self.cat.max_open[user_id] = max(self.cat.max_open[user_id], self.cat.open_count[user_id])

    async def on_message(self, message: str | bytes) -> None:
        try:
            text = orjson.loads(message)["text"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.cat.dropped += 1
            self.drop()  # like the real Cat: no close code
            return
        received = time.perf_counter()
        cat = self.cat
        cat.busy[self.user_id] += 1
        cat.max_busy[self.user_id] = max(cat.max_busy[self.user_id], cat.busy[self.user_id])
        try:
            frames = await cat.answer(self.user_id, text)
            for n, frame in enumerate(frames):
                if n and cat.pace_s:
                    await asyncio.sleep(cat.pace_s)  # a model producing its next token
                target = cat.sockets.get(self.user_id)
                if target is None or target.ws_connection is None:
                    return
                await target.write_message(orjson.dumps(frame).decode())
            finished = time.perf_counter()
            cat.served[text] = finished - received
            cat.spans[text] = (received, finished)
        finally:
            cat.busy[self.user_id] -= 1

    def drop(self) -> None:
        if self.ws_connection is not None and self.ws_connection.stream is not None:
            self.ws_connection.stream.close()

    def on_close(self) -> None:
        self.cat._all.discard(self)
        self.cat.open_count[self.user_id] -= 1
        if self.cat.sockets.get(self.user_id) is self:
            del self.cat.sockets[self.user_id]
        self.cat.closed[self.user_id].set()
