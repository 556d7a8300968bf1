"""Every bad token is refused before the upgrade with 401 and a JSON body; an open
socket is closed when its token expires, and gets the edge's heartbeat without having to
answer it.

The heartbeat's other half, the kernel dropping a peer that stopped acknowledging
(TCP_USER_TIMEOUT, services/ws_edge/keepalive.py), is checked only as far as the option
set on the edge's socket: seeing the kernel act needs the peer's packets dropped (a
firewall rule or a qdisc on loopback), which these tests may not do to the host."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import Callable

import jwt
import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from shared.auth.tokens import DEV_SECRET
from services.ws_edge.handlers.websocket import EdgeSocket
from services.ws_edge.keepalive import USER_TIMEOUT
from services.ws_edge.server import EdgeServer
from tests.support.client import UPGRADE, Client


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"sub": "alice", "groups": [], "roles": [], "iat": now, "exp": now + 60}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(claims: dict[str, object]) -> str:
    header = _b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{header}.{_b64(orjson.dumps(claims))}."


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "alg_none": lambda: _unsigned(_claims()),
    "wrong_algorithm": lambda: jwt.encode(_claims(), DEV_SECRET, algorithm="HS512"),
    "bad_signature": lambda: jwt.encode(_claims(), "x" * 40, algorithm="HS256"),
    "expired": lambda: jwt.encode(_claims(exp=int(time.time()) - 10), DEV_SECRET, algorithm="HS256"),
    "missing_exp": lambda: jwt.encode(_claims(exp=None), DEV_SECRET, algorithm="HS256"),
    "garbage": lambda: "not.a.token",
}


async def _handshake(port: int, url_suffix: str = "", headers: dict[str, str] | None = None) -> HTTPClientError:
    request = HTTPRequest(
        f"http://127.0.0.1:{port}/ws{url_suffix}", headers={**UPGRADE, **(headers or {})}
    )
    with pytest.raises(HTTPClientError) as refused:
        await AsyncHTTPClient().fetch(request)
    return refused.value


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_token_is_refused_with_401_json(edge: EdgeServer, case: str) -> None:
    error = await _handshake(edge.port, f"?token={BAD_TOKENS[case]()}")
    assert error.code == 401
    assert error.response is not None
    body = orjson.loads(error.response.body)
    assert body["error"] == ("token_expired" if case == "expired" else "token_invalid")
    assert body["message"]


async def test_tampered_payload_is_refused(edge: EdgeServer, token_for: Callable[..., str]) -> None:
    header, _payload, signature = token_for("bob").split(".")
    forged = _b64(orjson.dumps(_claims(sub="bob", roles=["admin"])))
    error = await _handshake(edge.port, f"?token={header}.{forged}.{signature}")
    assert error.code == 401


async def test_missing_token_is_refused(edge: EdgeServer) -> None:
    error = await _handshake(edge.port)
    assert error.code == 401
    assert error.response is not None
    assert orjson.loads(error.response.body)["error"] == "token_missing"


async def test_plain_get_without_upgrade_gets_426_json(edge: EdgeServer) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await AsyncHTTPClient().fetch(f"http://127.0.0.1:{edge.port}/ws")
    assert refused.value.code == 426
    assert refused.value.response is not None
    assert orjson.loads(refused.value.response.body)["error"] == "upgrade_required"


@pytest.mark.parametrize("via", ["query", "header", "cookie", "subprotocol"])
async def test_token_accepted_from_query_header_cookie_and_subprotocol(
    edge: EdgeServer, token_for: Callable[..., str], via: str
) -> None:
    client = await Client.connect(edge.port, token_for("alice", ("team",), ("admin",)), via=via)
    assert client.welcome["data"]["user"] == "alice"
    assert client.welcome["data"]["groups"] == ["team"]
    assert client.welcome["data"]["roles"] == ["admin"]


async def test_subprotocol_auth_selects_warren_v1_and_never_echoes_the_token(
    edge: EdgeServer, token_for: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    token = token_for("alice")
    caplog.set_level(logging.DEBUG)
    client = await Client.connect(edge.port, token, via="subprotocol")
    assert client.welcome["data"]["user"] == "alice"
    assert client.connection.selected_subprotocol == "warren.v1"
    response = client.connection.headers
    assert response is not None
    assert response["Sec-WebSocket-Protocol"] == "warren.v1"
    assert not any(token in value for _name, value in response.get_all())
    # Nor in any log line of the handshake (the access log drops the query, and
    # logs no headers).
    signature = token.rsplit(".", 1)[1]
    assert not any(signature in record.getMessage() or signature in str(record.__dict__)
                   for record in caplog.records)


async def test_subprotocol_without_a_token_entry_is_refused_401(edge: EdgeServer) -> None:
    for offered in ("warren.v1", "warren.v1, warren.auth."):
        error = await _handshake(edge.port, headers={"Sec-WebSocket-Protocol": offered})
        assert error.code == 401
        assert error.response is not None
        assert orjson.loads(error.response.body)["error"] == "token_missing"


async def test_subprotocol_with_a_bad_token_is_refused_401(edge: EdgeServer) -> None:
    error = await _handshake(
        edge.port, headers={"Sec-WebSocket-Protocol": f"warren.v1, warren.auth.{BAD_TOKENS['expired']()}"}
    )
    assert error.code == 401
    assert error.response is not None
    assert orjson.loads(error.response.body)["error"] == "token_expired"


async def test_subprotocol_token_comes_before_the_cookie(
    edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    # A page's own token wins over an older one its browser keeps in the cookie.
    request = HTTPRequest(
        f"ws://127.0.0.1:{edge.port}/ws", headers={"Cookie": f"warren_token={token_for('bob')}"}
    )
    connection = await websocket_connect(
        request, subprotocols=["warren.v1", f"warren.auth.{token_for('alice')}"]
    )
    assert (await Client(connection).recv())["data"]["user"] == "alice"


async def test_origin_allow_list(make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]) -> None:
    edge = make_edge(WARREN_EDGE_ALLOWED_ORIGINS="https://app.example")
    await edge.start()
    error = await _handshake(
        edge.port, f"?token={token_for('alice')}", {"Origin": "https://evil.example"}
    )
    assert error.code == 403
    assert error.response is not None
    assert orjson.loads(error.response.body)["error"] == "origin_forbidden"

    request = HTTPRequest(
        f"ws://127.0.0.1:{edge.port}/ws?token={token_for('alice')}",
        headers={"Origin": "https://app.example"},
    )
    client = Client(await websocket_connect(request))
    assert (await client.recv())["type"] == "welcome"


async def test_token_expiry_closes_the_socket_with_4001(
    edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    client = await Client.connect(edge.port, token_for("alice", ttl_s=1))
    code, reason = await client.closed(timeout=5)
    assert code == 4001
    assert reason == "token expired"
    assert edge.metrics.closed.labels("4001")._value.get() == 1


class PlainClient:
    """A WebSocket client that answers nothing unless told to (wsproto over a stream)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []

    @classmethod
    async def connect(cls, port: int, token: str) -> PlainClient:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        client.send(Request(host=f"127.0.0.1:{port}", target=f"/ws?token={token}"))
        assert isinstance(await client.next_event(), AcceptConnection)
        return client

    def send(self, event: Event) -> None:
        self.writer.write(self.ws.send(event))

    async def next_event(self, timeout: float = 10.0) -> Event:
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            self.ws.receive_data(data or None)
            self.events.extend(self.ws.events())
        return self.events.pop(0)


async def _welcomed(port: int, token: str) -> PlainClient:
    """A connected client whose first frame was the welcome."""
    client = await PlainClient.connect(port, token)
    welcome = await client.next_event()
    assert isinstance(welcome, TextMessage) and orjson.loads(welcome.data)["type"] == "welcome"
    return client


async def _round_trip(client: PlainClient, payload: bytes) -> list[Event]:
    """Ping the edge and return what came before its answer. Tornado reads a client's
    frames only once ``open()`` has returned, so the answer also says the edge's
    ``_start()`` is done (the keepalive has admitted the socket, or would have)."""
    client.send(Ping(payload))
    before: list[Event] = []
    while not isinstance(event := await client.next_event(), Pong) or event.payload != payload:
        before.append(event)
    return before


def _edge_socket(edge: EdgeServer) -> socket.socket:
    (handler,) = edge.hub.subscribed()
    assert isinstance(handler, EdgeSocket) and handler.ws_connection is not None
    stream = handler.ws_connection.stream
    assert stream is not None and stream.socket is not None
    return stream.socket


async def test_an_idle_socket_gets_a_heartbeat_each_interval_and_need_not_answer(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    """Unsolicited empty pongs, none before the welcome, about one an interval; a client
    that answers nothing stays, its own pings are answered and its pongs ignored."""
    interval = 0.5
    edge = make_edge(WARREN_EDGE_PING_INTERVAL_S=str(interval), WARREN_EDGE_PING_TIMEOUT_S="2")
    await edge.start()
    client = await _welcomed(edge.port, token_for("alice"))
    beats: list[float] = []
    loop = asyncio.get_running_loop()
    for _ in range(4):
        beat = await client.next_event()
        assert isinstance(beat, Pong) and beat.payload == b""
        beats.append(loop.time())
    # The wheel sends each beat in its slot, one interval after the last; the loose lower
    # bound leaves room for a late visit on a busy host.
    assert all(b - a > interval / 2 for a, b in zip(beats, beats[1:]))
    client.send(Pong(b"unasked"))  # ignored, as RFC 6455 allows
    assert all(isinstance(e, Pong) and e.payload == b"" for e in await _round_trip(client, b"?"))
    assert len(edge.hub) == 1  # still open: the round trip above was answered
    client.writer.close()


@pytest.mark.skipif(USER_TIMEOUT is None, reason="TCP_USER_TIMEOUT is Linux's")
async def test_the_edge_sets_the_kernel_user_timeout_on_each_socket(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_EDGE_PING_INTERVAL_S="20", WARREN_EDGE_PING_TIMEOUT_S="7.5")
    await edge.start()
    client = await _welcomed(edge.port, token_for("alice"))
    assert await _round_trip(client, b"admitted?") == []
    assert USER_TIMEOUT is not None
    assert _edge_socket(edge).getsockopt(socket.IPPROTO_TCP, USER_TIMEOUT) == 7500
    assert len(edge.keepalive) == 1
    client.writer.close()


async def test_no_interval_means_no_heartbeat_and_no_user_timeout(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_EDGE_PING_INTERVAL_S="0")
    await edge.start()
    client = await _welcomed(edge.port, token_for("alice"))
    assert await _round_trip(client, b"admitted?") == []
    if USER_TIMEOUT is not None:
        assert _edge_socket(edge).getsockopt(socket.IPPROTO_TCP, USER_TIMEOUT) == 0
    assert len(edge.keepalive) == 0
    client.writer.close()
