"""The edge with its database unreachable (PostgreSQL behind a TCP proxy that is cut):
``503 database_unavailable`` over HTTP and on the socket, then service again once it is
back, without a restart. Without the user check, sockets still open meanwhile. The whole
system under the same fault: tests/chaos."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from shared.db import make_engine, session_factory
from shared.db.notifications import make_notification
from shared.messaging import Command
from services.ws_edge.server import EdgeServer
from tests.support.catalogue import declared, known
from tests.support.client import Client
from tests.support.tcp_proxy import TcpProxy

UNAVAILABLE = {
    "error": "database_unavailable", "message": "the database is unavailable; retry later",
}


@pytest.fixture
def database_url(postgres_url: str, postgres_proxy: TcpProxy) -> str:
    """The edge's database (``make_edge`` reads this fixture): PostgreSQL via the proxy."""
    return postgres_proxy.database_url(postgres_url)


async def call(port: int, token: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = HTTPRequest(
        f"http://127.0.0.1:{port}{path}", method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {token}"},
        body=None if body is None else orjson.dumps(body), request_timeout=10,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as exc:
        assert exc.response is not None
        response = exc.response
    return response.code, orjson.loads(response.body)


def store_notification(database_url: str, envelope_id: str, user: str) -> None:
    engine = make_engine(database_url)
    try:
        with session_factory(engine).begin() as session:
            body = orjson.dumps({"id": envelope_id})
            session.add(make_notification(envelope_id, user, "excel.done", body))
    finally:
        engine.dispose()


async def test_the_http_api_answers_503_while_the_database_is_away_then_recovers(
    edge: EdgeServer, postgres_proxy: TcpProxy, token_for: Callable[..., str]
) -> None:
    token = token_for("alice")
    postgres_proxy.cut()
    for path, body in (
        ("/api/exports", None),
        ("/api/exports/abc123", None),
        ("/api/exports/abc123/file", None),
        ("/api/runs", None),
        ("/api/runs/abc123", None),
        ("/api/exports", {"report": "sample", "params": {"rows": 5}}),
        ("/auth/login", {"username": "alice", "password": "x"}),
    ):
        assert await call(edge.port, token, path, body) == (503, UNAVAILABLE), path
    assert edge.is_ready()  # the broker side is fine: readiness is about the broker

    postgres_proxy.restore()
    assert await call(edge.port, token, "/api/exports") == (200, {"exports": []})
    assert await call(edge.port, token, "/api/runs") == (200, {"runs": []})


async def test_a_frame_that_needs_the_database_gets_a_clear_error_and_the_socket_stays(
    edge: EdgeServer, postgres_proxy: TcpProxy, token_for: Callable[..., str], amqp_url: str,
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    export = {"type": "excel.create", "ref": 1, "data": {"report": "sample", "params": {}}}
    async with declared(amqp_url, Command.EXCEL_CREATE):
        await known(edge, Command.EXCEL_CREATE)
        postgres_proxy.cut()
        refused = await alice.request(export)
        assert refused == {"type": "error", "ref": 1, "data": {
            "code": "database_unavailable", "message": UNAVAILABLE["message"]}}
        # Not a strike, and frames that need only the broker go on.
        sent = await alice.request(
            {"type": "message.send", "ref": 2, "to": "user:alice", "data": {}}
        )
        assert sent["type"] == "ack"

        postgres_proxy.restore()
        # Recorded again; no excel worker runs in this test, so the command finds no queue.
        again = await alice.request({**export, "ref": 3})
    assert again["type"] == "error" and again["data"]["code"] == "no_service", again


async def test_without_the_user_check_sockets_open_and_notifications_wait_for_the_database(
    edge: EdgeServer, postgres_proxy: TcpProxy, database_url: str,
    token_for: Callable[..., str],
) -> None:
    assert not edge.settings.check_users
    # Off the loop: the proxy in front of the database runs on it.
    await asyncio.to_thread(store_notification, database_url, "t1-done", "alice")
    postgres_proxy.cut()
    # Whether notifications wait cannot be read: the socket opens without them.
    alice = await Client.connect(edge.port, token_for("alice"))
    sent = await alice.request({"type": "message.send", "ref": 1, "to": "user:bob", "data": {}})
    assert sent["type"] == "ack"
    assert not alice.pending  # nothing came before the ack: nothing was replayed
    alice.close()

    postgres_proxy.restore()
    again = await Client.connect(edge.port, token_for("alice"))
    assert (await again.recv())["id"] == "t1-done"
