"""Resource abuse against a real edge: a frame flood, slow readers, and thousands of
connections that never finish their handshake.

- A flood from one socket is answered ``rate_limited``, then closed with 4030; the
  same user's other sockets, and everyone else, carry on.
- A socket that stops reading is closed with 4008 once its outbound buffer is full;
  what was already written to it arrives whole, then the close frame.
- Idle and half-done connections are closed within ``WARREN_EDGE_HANDSHAKE_TIMEOUT_S``;
  meanwhile the edge stays ready and a real client connects and gets its messages.
- A user holds at most ``WARREN_EDGE_MAX_SOCKETS_PER_USER`` sockets on an edge; past it
  upgrades are refused ``429 too_many_sockets``, even when they all come at once, and
  every socket that goes (closed, or refused because its keys could not be bound) frees
  its slot.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher
from services.ws_edge.server import EdgeServer
from tests.support.client import UPGRADE as UPGRADE_HEADERS
from tests.support.client import Client
from tests.support.rabbit import reconnected
from tests.support.tcp_proxy import TcpProxy

SERVICE = Address.service("test")
TIMEOUT = 30.0


def event(user: str, **data: object) -> Envelope:
    return Envelope(type="test.event", to=Address.user(user), sender=SERVICE, data=dict(data))


def sample(edge: EdgeServer, name: str, **labels: str) -> float:
    return edge.metrics.registry.get_sample_value(name, labels) or 0.0


# -- a frame flood -------------------------------------------------------------------


async def read_until_closed(client: Client) -> list[dict[str, Any]]:
    """Every frame until the edge closes the socket."""
    frames = []
    async with asyncio.timeout(TIMEOUT):
        while (message := await client.connection.read_message()) is not None:
            frames.append(orjson.loads(message))
    return frames


async def test_a_frame_flood_is_refused_then_closed_with_4030(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    # Two invalid frames would close a socket with 4029: rate_limited is not one.
    edge = make_edge(WARREN_EDGE_FRAME_RATE="5", WARREN_EDGE_FRAME_BURST="10",
                     WARREN_EDGE_INVALID_FRAME_LIMIT="2")
    await edge.start()
    flooder = await Client.connect(edge.port, token_for("flooder"))
    other_tab = await Client.connect(edge.port, token_for("flooder"))

    sent = 300
    for n in range(sent):
        await flooder.send({"type": "message.send", "ref": n, "to": "user:nobody", "data": {}})
    replies = await read_until_closed(flooder)

    assert (flooder.connection.close_code, flooder.connection.close_reason) == (
        4030, "too many frames"
    )
    # One reply per frame handled, in order, each with its ref; then nothing more.
    assert [r["ref"] for r in replies] == list(range(len(replies)))
    assert len(replies) < sent
    acked = [r for r in replies if r["type"] == "ack"]
    limited = [r for r in replies if r["type"] == "error"]
    assert len(acked) >= 10  # the burst went through
    assert limited and all(r["data"]["code"] == "rate_limited" for r in limited)
    assert "frames a second" in limited[0]["data"]["message"]
    assert replies[-1]["type"] == "error"  # the frame that closed the socket was answered too
    assert len(limited) >= 10  # closed only once as far beyond the limit as the burst
    assert sample(edge, "warren_edge_frames_refused_total", reason="rate_limited") == len(limited)
    assert sample(edge, "warren_edge_closes_total", code="4030") == 1
    assert sample(edge, "warren_edge_closes_total", code="4029") == 0

    # The limit is per socket: the same user's other socket is untouched.
    reply = await other_tab.request(
        {"type": "message.send", "ref": "ok", "to": "user:nobody", "data": {}}
    )
    assert reply["type"] == "ack"


async def test_a_client_within_its_burst_is_not_limited(
    edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    burst = edge.settings.frame_rate.burst
    client = await Client.connect(edge.port, token_for("alice"))
    for n in range(burst):
        reply = await client.request(
            {"type": "message.send", "ref": n, "to": "user:bob", "data": {}}
        )
        assert reply["type"] == "ack", reply
    assert sample(edge, "warren_edge_frames_refused_total", reason="rate_limited") == 0


# -- slow readers --------------------------------------------------------------------


class Logged(logging.Handler):
    """Resolves when the edge (in this process) logs ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.record: asyncio.Future[logging.LogRecord] = asyncio.get_running_loop().create_future()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message and not self.record.done():
            self.record.set_result(record)


@pytest.fixture
async def slow_client_closed() -> AsyncIterator[Logged]:
    logger = logging.getLogger("services.ws_edge.handlers.websocket")
    handler = Logged("slow client closed")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


class SlowReader:
    """A WebSocket client with a tiny receive window that reads only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.texts: list[str] = []  # whole text messages, in order
        self._parts: list[str] = []

    @classmethod
    async def connect(cls, port: int, token: str) -> SlowReader:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # A small stream buffer too: the transport stops reading a few KB in.
        client = cls(*await asyncio.open_connection(sock=sock, limit=1024))
        upgrade = Request(host=f"127.0.0.1:{port}", target=f"/ws?token={token}")
        client.writer.write(client.ws.send(upgrade))
        events = await client.read_until(AcceptConnection)
        assert any(isinstance(e, AcceptConnection) for e in events)
        while not client.texts:
            await client.read_until(TextMessage)
        assert orjson.loads(client.texts.pop(0))["type"] == "welcome"
        return client

    async def read_until(self, kind: type) -> list[Any]:
        """Read until an event of ``kind`` arrives; the other events met on the way."""
        events: list[Any] = []
        async with asyncio.timeout(TIMEOUT):
            while not any(isinstance(e, kind) for e in events):
                data = await self.reader.read(65536)
                self.ws.receive_data(data or None)
                for received in self.ws.events():
                    if isinstance(received, TextMessage):
                        self._parts.append(received.data)
                        if received.message_finished:
                            self.texts.append("".join(self._parts))
                            self._parts.clear()
                    events.append(received)
        return events

    async def read_to_close(self) -> tuple[list[str], CloseConnection]:
        """Read on at last: every whole text message, then the close frame."""
        events = await self.read_until(CloseConnection)
        closed = next(e for e in events if isinstance(e, CloseConnection))
        self.writer.write(self.ws.send(closed.response()))
        texts, self.texts = self.texts, []
        return texts, closed

    def close(self) -> None:
        self.writer.close()


async def test_a_reader_that_stops_is_closed_with_4008_after_what_it_was_sent(
    make_edge: Callable[..., EdgeServer], publisher: Publisher, token_for: Callable[..., str],
    slow_client_closed: Logged,
) -> None:
    edge = make_edge(WARREN_EDGE_MAX_OUTBOUND_BYTES="65536")
    await edge.start()
    slow = await SlowReader.connect(edge.port, token_for("slow"))
    healthy = await Client.connect(edge.port, token_for("healthy"))

    sent = []
    for n in range(2000):  # about 32 MB at most, offered to a client that reads nothing
        sent.append(event("slow", n=n, pad="x" * 16_000))
        await publisher.publish_event(sent[-1])
        if slow_client_closed.record.done():
            break
    assert slow_client_closed.record.done(), "the edge never gave up on the slow reader"

    marker = event("healthy")
    await publisher.publish_event(marker)
    assert (await healthy.recv())["id"] == marker.id

    texts, closed = await slow.read_to_close()
    assert (closed.code, closed.reason) == (4008, "client too slow: outbound buffer full")
    received = [orjson.loads(text)["id"] for text in texts]
    # The events written before the close arrive whole and in order; the rest are lost.
    assert received == [e.id for e in sent[: len(received)]]
    assert 0 < len(received) < len(sent)
    assert sample(edge, "warren_edge_slow_client_disconnects_total") == 1
    slow.close()


async def test_a_frame_bigger_than_the_buffer_arrives_whole_before_the_4008(
    make_edge: Callable[..., EdgeServer], publisher: Publisher, token_for: Callable[..., str],
    slow_client_closed: Logged,
) -> None:
    # The kernel takes the first part of the frame at once (on loopback up to its 4 MB
    # send buffer); the rest exceeds the edge's buffer. That rest must still go out
    # before the close frame, or the client would read the close frame as payload.
    edge = make_edge(WARREN_EDGE_MAX_OUTBOUND_BYTES="65536")
    await edge.start()
    slow = await SlowReader.connect(edge.port, token_for("slow"))
    huge = event("slow", pad="x" * (8 << 20))
    await publisher.publish_event(huge)
    await asyncio.wait_for(slow_client_closed.record, TIMEOUT)

    texts, closed = await slow.read_to_close()
    assert [orjson.loads(text)["id"] for text in texts] == [huge.id]
    assert (closed.code, closed.reason) == (4008, "client too slow: outbound buffer full")
    slow.close()


# -- idle and half-done connections --------------------------------------------------

IDLE = 2000
BATCH = 100
HANDSHAKE_TIMEOUT_S = 2.0
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {base64.b64encode(b'0123456789abcdef').decode()}\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
).encode()
# What each kind of connection sends before it falls silent.
HALF_DONE: tuple[bytes, ...] = (
    b"",  # nothing at all
    b"GET /ws?tok",  # half a request line
    UPGRADE[: UPGRADE.index(b"Sec-WebSocket-Key")],  # headers that never end
    # a body promised and never sent
    b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{",
    UPGRADE,  # an upgrade without a token: refused with 401, then idle on keep-alive
)
TRICKLE = 2  # these send one more header line after everyone has connected


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for both ends of every idle connection in this process, within the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * IDLE + 1024
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Idle:
    """One connection that starts a request and never finishes it."""

    def __init__(
        self, kind: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.kind = kind
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()
        self.lifetime = 0.0
        self.answer = b""
        self.done = asyncio.ensure_future(self._until_closed())

    @classmethod
    async def open(cls, port: int, kind: int) -> Idle:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HALF_DONE[kind])
        return cls(kind, reader, writer)

    async def _until_closed(self) -> None:
        try:
            self.answer = await self.reader.read()  # until the edge closes it
        except ConnectionResetError:
            pass
        self.lifetime = time.monotonic() - self.opened


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_idle_and_half_done_connections_are_closed_and_the_edge_serves_on(
    descriptors: None, make_edge: Callable[..., EdgeServer], publisher: Publisher,
    token_for: Callable[..., str],
) -> None:
    edge = make_edge(WARREN_EDGE_HANDSHAKE_TIMEOUT_S=str(HANDSHAKE_TIMEOUT_S))
    await edge.start()
    before = open_descriptors()

    idle: list[Idle] = []
    for start in range(0, IDLE, BATCH):
        idle += await asyncio.gather(
            *(Idle.open(edge.port, n % len(HALF_DONE)) for n in range(start, start + BATCH))
        )
    for connection in idle:
        if connection.kind == TRICKLE:
            connection.writer.write(b"Sec-WebSocket-Version: 13\r\n")  # slowloris: no more time

    # Meanwhile: the edge is ready, and a real client connects and gets its messages.
    open_meanwhile = sum(not c.done.done() for c in idle)
    ready = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{edge.port}/readyz")
    assert ready.code == 200
    client = await Client.connect(edge.port, token_for("real"))
    marker = event("real")
    await publisher.publish_event(marker)
    assert (await client.recv())["id"] == marker.id
    assert open_meanwhile > 0, "all idle connections were gone before the real client came"

    # Every idle connection is closed by the edge, within the handshake timeout (with
    # room for this loop's own scheduling of thousands of sockets).
    await asyncio.wait_for(asyncio.gather(*(c.done for c in idle)), HANDSHAKE_TIMEOUT_S + 30)
    slowest = max(c.lifetime for c in idle)
    assert slowest < HANDSHAKE_TIMEOUT_S + 10, f"an idle connection lived {slowest:.1f} s"
    refused = [c.answer for c in idle if c.kind == HALF_DONE.index(UPGRADE)]
    assert all(a.startswith(b"HTTP/1.1 401") and b'"token_missing"' in a for a in refused)
    assert all(c.answer == b"" for c in idle if c.kind != HALF_DONE.index(UPGRADE))

    for connection in idle:
        connection.writer.close()
    await asyncio.gather(*(c.writer.wait_closed() for c in idle), return_exceptions=True)
    # The edge let go of its side of all of them (the real client holds a few).
    assert open_descriptors() <= before + 10
    reply = await client.request({"type": "message.send", "ref": 1, "to": "user:real", "data": {}})
    assert reply["type"] == "ack"


# -- sockets per user ------------------------------------------------------------------


async def refusal(port: int, token: str) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of an upgrade the edge refuses."""
    request = HTTPRequest(f"http://127.0.0.1:{port}/ws?token={token}", headers=UPGRADE_HEADERS)
    with pytest.raises(HTTPClientError) as refused:
        await AsyncHTTPClient().fetch(request)
    response = refused.value.response
    assert response is not None
    return refused.value.code, orjson.loads(response.body)


async def test_an_upgrade_tornado_refuses_after_the_check_frees_its_slot(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_EDGE_MAX_SOCKETS_PER_USER="1")
    await edge.start()
    for _ in range(3):
        # Past the edge's checks, Tornado refuses a WebSocket version it does not speak.
        request = HTTPRequest(
            f"http://127.0.0.1:{edge.port}/ws?token={token_for('alice')}",
            headers={**UPGRADE_HEADERS, "Sec-WebSocket-Version": "8"},
        )
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(request)
        assert refused.value.code == 426
    assert edge.hub.slots("alice") == 0
    assert (await Client.connect(edge.port, token_for("alice"))).welcome["type"] == "welcome"


async def close_and_wait(client: Client) -> None:
    """Close ``client``; done once the edge has answered the close, which it does in the
    same step as it lets go of the socket (on_close)."""
    client.close()
    await client.closed()


async def test_sockets_past_the_per_user_limit_are_refused_until_one_closes(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_EDGE_MAX_SOCKETS_PER_USER="3")
    await edge.start()
    tabs = [await Client.connect(edge.port, token_for("alice")) for _ in range(3)]

    status, body = await refusal(edge.port, token_for("alice"))
    assert (status, body["error"]) == (429, "too_many_sockets")
    assert "3 sockets" in body["message"]
    assert sample(edge, "warren_edge_handshakes_refused_total", reason="too_many_sockets") == 1
    # Another user is not affected, and alice's open sockets carry on.
    bob = await Client.connect(edge.port, token_for("bob"))
    reply = await tabs[0].request({"type": "message.send", "ref": 1, "to": "user:bob", "data": {}})
    assert reply["type"] == "ack"
    assert (await bob.recv())["id"] == reply["data"]["id"]

    await close_and_wait(tabs.pop())
    assert (await Client.connect(edge.port, token_for("alice"))).welcome["data"]["user"] == "alice"
    status, body = await refusal(edge.port, token_for("alice"))
    assert (status, body["error"]) == (429, "too_many_sockets")
    assert edge.hub.slots("alice") == 3


async def test_concurrent_upgrades_of_one_user_get_exactly_the_limit(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_EDGE_MAX_SOCKETS_PER_USER="3")
    await edge.start()
    token = token_for("alice")
    results = await asyncio.gather(
        *(Client.connect(edge.port, token) for _ in range(12)), return_exceptions=True
    )
    opened = [r for r in results if isinstance(r, Client)]
    refused = [r for r in results if isinstance(r, HTTPClientError) and r.code == 429]
    assert (len(opened), len(refused)) == (3, 9), results
    assert sample(edge, "warren_edge_handshakes_refused_total", reason="too_many_sockets") == 9

    await asyncio.gather(*(close_and_wait(c) for c in opened))
    assert edge.hub.slots("alice") == 0
    again = await asyncio.gather(*(Client.connect(edge.port, token) for _ in range(3)))
    assert all(c.welcome["type"] == "welcome" for c in again)


def through(proxy: TcpProxy, amqp_url: str) -> str:
    """``amqp_url`` by way of ``proxy``."""
    url = urlsplit(amqp_url)
    return urlunsplit(url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}"))


async def test_an_upgrade_whose_keys_cannot_be_bound_is_refused_and_frees_its_slot(
    make_edge: Callable[..., EdgeServer], amqp_url: str, token_for: Callable[..., str]
) -> None:
    url = urlsplit(amqp_url)
    proxy = await TcpProxy(url.hostname or "127.0.0.1", url.port or 5672).start()
    try:
        edge = make_edge(
            WARREN_AMQP_URL=through(proxy, amqp_url),
            WARREN_EDGE_MAX_SOCKETS_PER_USER="1",
            WARREN_EDGE_BIND_TIMEOUT_S="0.5",
        )
        await edge.start()
        restored = reconnected(edge.connection)
        proxy.cut()  # the broker is out of reach: no key can be bound

        assert await refusal(edge.port, token_for("alice")) == (
            503, {"error": "unavailable", "message": "the broker is unavailable; retry later"}
        )
        assert sample(edge, "warren_edge_handshakes_refused_total", reason="unavailable") == 1
        assert (edge.hub.slots("alice"), edge.hub.opening, len(edge.hub)) == (0, 0, 0)
        assert edge.deps is not None and edge.deps.bindings.holders("user.alice") == 0

        proxy.restore()
        await asyncio.wait_for(restored, TIMEOUT)
        await asyncio.wait_for(edge.rebound(), TIMEOUT)
        alice = await Client.connect(edge.port, token_for("alice"))
        assert alice.welcome["data"]["user"] == "alice"
        assert sample(edge, "warren_edge_handshakes_refused_total", reason="too_many_sockets") == 0
        await edge.stop()  # while its broker is still reachable
    finally:
        await proxy.close()
