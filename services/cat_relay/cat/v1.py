"""Cat 1.x: one WebSocket per user at ``/ws/{user_id}``, replies streamed as frames.

The server keeps one socket per user id; a second socket for the same id steals or
drops replies, and non-JSON input drops the socket. So this client keeps at most one
socket per user, sends that user's asks over it one at a time, closes it after
``idle_s`` without asks, and reconnects with capped backoff when it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from cheshire_cat_api.api.status_api import StatusApi
from cheshire_cat_api.cat_client import CatClient as RestClient
from cheshire_cat_api.config import Config
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from services.cat_relay.cat.base import STATUS_TIMEOUT_S, CatStatus, History, OnToken
from services.cat_relay.cat.errors import CatFailed, CatTimeout, CatUnavailable
from services.cat_relay.cat.no_llm import V1_PLACEHOLDERS, TokenWatch, checked
from services.cat_relay.settings import CatSettings

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
CLOSE_WAIT_S = 2.0
# Where the Cat's admin chooses a model: the admin portal's settings.
SETTINGS_PAGE = "/admin/ (Settings: Language Model)"


def backoff() -> Iterator[float]:
    """Pauses between connection attempts: capped exponential backoff."""
    delay = BACKOFF_FIRST_S
    while True:
        yield delay
        delay = min(delay * 2, BACKOFF_MAX_S)


class _NotSent(CatUnavailable):
    """The ask could not be written: the Cat has not seen it."""


class _Socket:
    """One user's socket to the Cat. Frames go to the answer in progress, as they arrive
    (a callback: no read queue and no future per frame); frames between answers, such as
    a plugin's notification, are dropped."""

    def __init__(self) -> None:
        self.connection: WebSocketClientConnection | None = None
        self.closed = asyncio.Event()
        self._answer: asyncio.Future[str] | None = None
        self._on_token: OnToken | None = None
        self._asked: str | None = None

    @property
    def open(self) -> bool:
        return (
            self.connection is not None
            and self.connection.protocol is not None
            and not self.closed.is_set()
        )

    async def ask(self, text: str, on_token: OnToken) -> str:
        """Send an ask; the final ``chat`` frame's text, or the ``error`` frame raised."""
        assert self.connection is not None
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._answer, self._on_token, self._asked = answer, on_token, text
        try:
            try:
                await self.connection.write_message(orjson.dumps({"text": text}).decode())
            except Exception as exc:  # WebSocketClosedError, StreamClosedError
                raise _NotSent(f"the Cat socket closed: {exc!r}") from exc
            return await answer
        finally:
            self._answer = self._on_token = self._asked = None

    def on_message(self, raw: str | bytes | None) -> None:
        if raw is None:
            self.closed.set()
            self._end(CatUnavailable("the Cat closed the socket before answering"))
            return
        answer = self._answer
        if answer is None or answer.done():
            return
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("ignored a non-JSON frame from the Cat")
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        if kind == "chat_token":
            content = frame.get("content")
            if isinstance(content, str) and content and self._on_token is not None:
                self._on_token(content)
        elif kind == "chat":
            why = frame.get("why")
            answered = why.get("input") if isinstance(why, dict) else None
            if isinstance(answered, str) and answered != self._asked:
                # The end of an answer to another ask: the Cat writes a user's replies to
                # the user's newest socket, and a replica that lost its broker connection
                # mid-answer leaves one being written when the next owner connects. Ours
                # comes after it (its tokens, already passed on, cannot be taken back).
                log.info("ignored the Cat's reply to another ask of the same user")
                return
            reply = frame.get("text")
            if not isinstance(reply, str):
                reply = frame.get("content")
            answer.set_result(reply if isinstance(reply, str) else "")
        elif kind == "error":
            name = frame.get("name") or "CatError"
            self._end(CatFailed(f"{name}: {frame.get('description') or 'no description'}"))
        # "notification" frames and anything new are not part of the answer.

    def _end(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()

    async def close_and_wait(self) -> None:
        """Close, and wait (a little) for the Cat to close its end: only then may another
        replica open the user's next socket without the Cat mixing the two up."""
        self.close()
        try:
            await asyncio.wait_for(self.closed.wait(), CLOSE_WAIT_S)
        except TimeoutError:
            log.info("the Cat did not close a released socket in time")


@dataclass(slots=True)
class _Session:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    socket: _Socket | None = None
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
        status = RestClient(rest_config(settings)).status  # blocking: called in ``blocking`` only
        assert status is not None
        self._rest_status: StatusApi = status
        self._sessions: dict[str, _Session] = {}
        parts = urlsplit(settings.url)
        scheme = "wss" if settings.secure else "ws"
        self._ws_base: str = f"{scheme}://{parts.netloc}{parts.path}/ws/"
        self._settings_page: str = f"{settings.url}{SETTINGS_PAGE}"

    @property
    def open_sockets(self) -> int:
        return sum(1 for s in self._sessions.values() if s.socket is not None and s.socket.open)

    async def ask(self, user_id: str, text: str, history: History, on_token: OnToken) -> str:
        session = self._sessions.setdefault(user_id, _Session())
        session.pending += 1
        try:
            async with session.lock:
                if session.idle is not None:
                    session.idle.cancel()
                    session.idle = None
                watch = TokenWatch(on_token)
                reply = await self._ask(user_id, session, text, watch)
                return checked(reply, watch, V1_PLACEHOLDERS, self._settings_page)
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
                    return await socket.ask(text, on_token)
                except _NotSent:
                    if not reused:
                        raise
                    # The kept socket died while idle (say, the Cat restarted): one fresh try.
                    self._drop(session)
                    socket = await self._socket(user_id, session)
                    return await socket.ask(text, on_token)
        except TimeoutError as exc:
            # A late reply would be read as the answer to the next ask: start afresh.
            self._drop(session)
            raise CatTimeout(f"the Cat did not answer within {self._settings.timeout_s:g} s") from exc
        except CatUnavailable:
            self._drop(session)
            raise

    async def _socket(self, user_id: str, session: _Session) -> _Socket:
        if session.socket is not None and session.socket.open:
            return session.socket
        session.socket = None
        url = self._ws_base + quote(user_id, safe="")
        if self._settings.api_key:
            url += "?token=" + quote(self._settings.api_key, safe="")
        delays = backoff()
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                while True:
                    try:
                        request = HTTPRequest(url, connect_timeout=self._settings.connect_timeout_s)
                        socket = _Socket()
                        socket.connection = await websocket_connect(
                            request, on_message_callback=socket.on_message
                        )
                        # One small frame per ask: do not let Nagle hold it back.
                        socket.connection.stream.set_nodelay(True)
                        session.socket = socket
                        return socket
                    except (OSError, ConnectionError) as exc:
                        log.info("cat socket connect failed", extra={"user": user_id, "error": repr(exc)})
                    except Exception as exc:  # tornado raises HTTPClientError for a refused upgrade
                        raise CatFailed(f"the Cat refused the WebSocket: {exc}") from exc
                    await asyncio.sleep(next(delays))
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

    async def release(self, user_id: str) -> None:
        session = self._sessions.pop(user_id, None)
        if session is None:
            return
        if session.idle is not None:
            session.idle.cancel()
        socket, session.socket = session.socket, None
        if socket is not None:
            await socket.close_and_wait()

    async def status(self) -> CatStatus:
        def home() -> Any:
            return self._rest_status.home(_request_timeout=STATUS_TIMEOUT_S)

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
