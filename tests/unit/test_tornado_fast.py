"""The facts services/ws_edge/tornado_fast.py relies on, asserted against the installed Tornado.

If one of these fails after a Tornado upgrade, the shortcuts are not safe on that
version: read the new Tornado's ``IOStream`` and ``WebSocketHandler``, adapt the module,
then widen ``SUPPORTED``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import tornado
import tornado.web
import tornado.websocket
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.testing import bind_unused_port

from services.ws_edge import tornado_fast

TIMEOUT = 10.0


def test_the_installed_tornado_is_one_the_shortcuts_were_written_for() -> None:
    low, below = tornado_fast.SUPPORTED
    assert low <= tornado.version_info[:2] < below, (
        f"Tornado {tornado.version} is outside {low} <= version < {below}: "
        "services/ws_edge/tornado_fast.py falls back to the slow path. Check the facts "
        "in this file against it, then widen SUPPORTED."
    )
    assert tornado_fast.ENABLED


# -- send_now: IOStream.socket and IOStream.writing() ---------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _fill(sock: socket.socket) -> None:
    """Send until the kernel takes no more."""
    sock.setblocking(False)
    try:
        while True:
            sock.send(b"x" * 65536)
    except BlockingIOError:
        pass


async def test_a_stream_exposes_its_socket_and_whether_writes_are_queued(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = IOStream(ours)
    assert type(stream) is IOStream
    assert stream.socket is ours
    assert stream.writing() is False
    _fill(ours)
    stream.write(b"queued")  # the kernel takes none of it: IOStream keeps it
    assert stream.writing() is True
    stream.close()


async def test_send_now_writes_straight_to_an_idle_stream(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = IOStream(ours)
    assert tornado_fast.send_now(stream, b"frame") == 5
    assert theirs.recv(16) == b"frame"
    stream.close()


async def test_send_now_takes_nothing_while_writes_are_queued(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _theirs = pair
    stream = IOStream(ours)
    _fill(ours)
    stream.write(b"first")
    assert tornado_fast.send_now(stream, b"second") == 0  # it must go behind "first"
    stream.close()


async def test_send_now_takes_nothing_when_the_socket_is_full(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _theirs = pair
    stream = IOStream(ours)
    _fill(ours)
    assert not stream.writing()
    assert tornado_fast.send_now(stream, b"frame") == 0
    stream.close()


async def test_send_now_leaves_other_streams_to_tornado(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    class Wrapped(IOStream):  # as SSLIOStream: its socket is not where the bytes go
        pass

    ours, _theirs = pair
    stream = Wrapped(ours)
    assert tornado_fast.send_now(stream, b"frame") == 0
    stream.close()


async def test_send_now_raises_when_the_peer_is_gone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = IOStream(ours)
    theirs.close()
    with pytest.raises(OSError):
        tornado_fast.send_now(stream, b"frame")
    stream.close()


async def test_outside_the_supported_versions_send_now_takes_nothing(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tornado_fast, "ENABLED", False)
    ours, _theirs = pair
    stream = IOStream(ours)
    assert tornado_fast.send_now(stream, b"frame") == 0
    stream.close()


# -- release_handshake: nothing reads request, _headers or ui once the stream is detached --


class Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Echo(tornado.websocket.WebSocketHandler):
    """Releases the handshake in open(), as the edge does, then echoes."""

    def initialize(self, seen: dict[str, object], closed: asyncio.Future[None]) -> None:
        self.seen = seen
        self.closed = closed

    def open(self, *args: str, **kwargs: str) -> None:
        self.seen["before"] = (
            type(self.request.headers).__name__, type(self._headers).__name__, self.ui is not None
        )
        tornado_fast.release_handshake(self)
        self.seen["after"] = (self.request, self._headers, self.ui)
        self.write_message("welcome")

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message)

    def on_close(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[int, dict[str, object], asyncio.Future[None]]]:
    seen: dict[str, object] = {}
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    app = tornado.web.Application([("/ws", Echo, {"seen": seen, "closed": closed})])
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    logged = Logged()
    loggers = [logging.getLogger(n) for n in ("tornado.application", "tornado.general")]
    for logger in loggers:
        logger.addHandler(logged)
    yield port, seen, closed
    for logger in loggers:
        logger.removeHandler(logged)
    server.stop()
    await server.close_all_connections()
    assert logged.records == [], [r.getMessage() for r in logged.records]


async def test_a_socket_works_and_closes_cleanly_after_its_handshake_is_released(
    echo_server: tuple[int, dict[str, object], asyncio.Future[None]],
) -> None:
    port, seen, closed = echo_server
    client = await asyncio.wait_for(
        tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws"), TIMEOUT
    )
    assert await asyncio.wait_for(client.read_message(), TIMEOUT) == "welcome"
    # What the release drops is there before it, and gone after it.
    assert seen["before"] == ("HTTPHeaders", "HTTPHeaders", True)
    assert seen["after"] == (None, None, None)
    await client.write_message("ping")
    assert await asyncio.wait_for(client.read_message(), TIMEOUT) == "ping"
    client.close()
    await asyncio.wait_for(closed, TIMEOUT)  # Tornado's on_close path ran without them


async def test_outside_the_supported_versions_the_handshake_is_kept(
    echo_server: tuple[int, dict[str, object], asyncio.Future[None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tornado_fast, "ENABLED", False)
    port, seen, closed = echo_server
    client = await asyncio.wait_for(
        tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws"), TIMEOUT
    )
    assert await asyncio.wait_for(client.read_message(), TIMEOUT) == "welcome"
    after = seen["after"]
    assert isinstance(after, tuple) and None not in after
    client.close()
    await asyncio.wait_for(closed, TIMEOUT)
