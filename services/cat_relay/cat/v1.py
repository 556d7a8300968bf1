"""Cat 1.x: one WebSocket per user at ``/ws/{user_id}``, replies streamed as frames.

The server keeps one socket per user id; a second socket for the same id steals or
drops replies, and non-JSON input drops the socket. So this client keeps at most one
socket per user, sends that user's asks over it one at a time, closes it after
``idle_s`` without asks, and reconnects with capped backoff when it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from cheshire_cat_api import CatClient as RestClient
from cheshire_cat_api import Config
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from services.cat_relay.cat.base import CatStatus, History, OnToken
from services.cat_relay.cat.errors import CatFailed, CatTimeout, CatUnavailable
from services.cat_relay.settings import CatSettings

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0


@dataclass(slots=True)
class _Session:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    socket: WebSocketClientConnection | None = None
    idle: asyncio.TimerHandle | None = None
    pending: int = 0  # asks holding or waiting for the lock


def rest_config(settings: CatSettings) -> Config:
    """The ``cheshire_cat_api`` configuration for this Cat."""
    parts = urlsplit(settings.url)
    return Config(
        base_url=parts.hostname or "127.0.0.1",
        port=parts.port or (443 if settings.secure else 80),
        auth_key=settings.api_key,
        secure_connection=settings.secure,
    )


class V1Client:
    protocol = "v1"
    keeps_history = True

    def __init__(self, settings: CatSettings, blocking: Executor) -> None:
        self._settings = settings
        self._blocking = blocking
        self._sessions: dict[str, _Session] = {}
        parts = urlsplit(settings.url)
        scheme = "wss" if settings.secure else "ws"
        self._ws_base = f"{scheme}://{parts.netloc}{parts.path}/ws/"

    @property
    def open_sockets(self) -> int:
        return sum(1 for s in self._sessions.values() if s.socket is not None)

    async def ask(self, user_id: str, text: str, history: History, on_token: OnToken) -> str:
        session = self._sessions.setdefault(user_id, _Session())
        session.pending += 1
        try:
            async with session.lock:
                if session.idle is not None:
                    session.idle.cancel()
                    session.idle = None
                return await self._ask(user_id, session, text, on_token)
        finally:
            session.pending -= 1
            if session.socket is not None:
                if session.pending == 0 and session.idle is None:
                    session.idle = asyncio.get_running_loop().call_later(
                        self._settings.idle_s, self._expire, user_id, session
                    )
            elif session.pending == 0 and self._sessions.get(user_id) is session:
                del self._sessions[user_id]

    async def _ask(self, user_id: str, session: _Session, text: str, on_token: OnToken) -> str:
        reused = session.socket is not None
        socket = await self._socket(user_id, session)  # bounded by the connect timeout
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                try:
                    await _send(socket, text)
                except CatUnavailable:
                    if not reused:
                        raise
                    # The kept socket died while idle (say, the Cat restarted): one fresh try.
                    self._drop(session)
                    socket = await self._socket(user_id, session)
                    await _send(socket, text)
                return await _answer(socket, on_token)
        except TimeoutError as exc:
            # A late reply would be read as the answer to the next ask: start afresh.
            self._drop(session)
            raise CatTimeout(f"the Cat did not answer within {self._settings.timeout_s:g} s") from exc
        except CatUnavailable:
            self._drop(session)
            raise

    async def _socket(self, user_id: str, session: _Session) -> WebSocketClientConnection:
        if session.socket is not None and session.socket.protocol is not None:
            return session.socket
        session.socket = None
        url = self._ws_base + quote(user_id, safe="")
        if self._settings.api_key:
            url += "?token=" + quote(self._settings.api_key, safe="")
        delay = BACKOFF_FIRST_S
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                while True:
                    try:
                        request = HTTPRequest(url, connect_timeout=self._settings.connect_timeout_s)
                        session.socket = await websocket_connect(request)
                        # One small frame per ask: do not let Nagle hold it back.
                        session.socket.stream.set_nodelay(True)
                        return session.socket
                    except (OSError, ConnectionError) as exc:
                        log.info("cat socket connect failed", extra={"user": user_id, "error": repr(exc)})
                    except Exception as exc:  # tornado raises HTTPClientError for a refused upgrade
                        raise CatFailed(f"the Cat refused the WebSocket: {exc}") from exc
                    await asyncio.sleep(delay)  # capped exponential backoff between attempts
                    delay = min(delay * 2, BACKOFF_MAX_S)
        except TimeoutError as exc:
            raise CatUnavailable(f"cannot reach the Cat at {self._settings.url}") from exc

    def _drop(self, session: _Session) -> None:
        if session.socket is not None:
            session.socket.close()
            session.socket = None

    def _expire(self, user_id: str, session: _Session) -> None:
        session.idle = None
        if session.pending:
            return
        self._drop(session)
        if self._sessions.get(user_id) is session:
            del self._sessions[user_id]

    async def status(self) -> CatStatus:
        def home() -> Any:
            return RestClient(rest_config(self._settings)).status.home(_request_timeout=5.0)

        try:
            reply = await asyncio.get_running_loop().run_in_executor(self._blocking, home)
        except Exception as exc:
            return CatStatus(False, self.protocol, detail=repr(exc))
        version = reply.get("version", "") if isinstance(reply, dict) else ""
        return CatStatus(True, self.protocol, version=str(version))

    async def close(self) -> None:
        for user_id, session in list(self._sessions.items()):
            if session.idle is not None:
                session.idle.cancel()
            self._drop(session)
            del self._sessions[user_id]


async def _send(socket: WebSocketClientConnection, text: str) -> None:
    try:
        await socket.write_message(orjson.dumps({"text": text}).decode())
    except Exception as exc:  # WebSocketClosedError, StreamClosedError
        raise CatUnavailable(f"the Cat socket closed: {exc!r}") from exc


async def _answer(socket: WebSocketClientConnection, on_token: OnToken) -> str:
    """Read frames until the final ``chat`` frame or an ``error`` frame."""
    while True:
        raw = await socket.read_message()
        if raw is None:
            raise CatUnavailable("the Cat closed the socket before answering")
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("ignored a non-JSON frame from the Cat")
            continue
        if not isinstance(frame, dict):
            continue
        kind = frame.get("type")
        if kind == "chat_token":
            content = frame.get("content")
            if isinstance(content, str) and content:
                on_token(content)
        elif kind == "chat":
            reply = frame.get("text")
            if not isinstance(reply, str):
                reply = frame.get("content")
            return reply if isinstance(reply, str) else ""
        elif kind == "error":
            name = frame.get("name") or "CatError"
            raise CatFailed(f"{name}: {frame.get('description') or 'no description'}")
        # "notification" frames and anything new are not part of the answer.
