"""Fuzzed HTTP requests to every endpoint that takes a body or a parameter: the edge's
``POST /auth/login`` and ``/api/exports``, the run and export lookups, and cat_relay's
``POST /send``; and every other method on them.

A request gets a JSON answer, never a 500 and never no answer: a 4xx with ``error`` and
``message`` when the request is wrong, and what the endpoint documents when it is
right (200, 202; 502 ``cat_error`` when a valid ask makes the Cat fail).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from shared.db import UserStore
from shared.messaging import Command
from shared.messaging.broker import connect, declare_work_queue
from services.cat_relay.server import RelayServer
from services.ws_edge.server import EdgeServer
from tests.hostile.strategies import (
    EXPORT_PARAMS,
    almost_json,
    dumps,
    finite_values,
    json_values,
    mostly,
    plain_objects,
)
from tests.support.relay import SERVICE_KEY

FUZZ = settings(
    database=None, max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REQUEST_TIMEOUT = 20.0
PASSWORD = "pw-alice-123"


def bodies(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Anything at all, almost JSON, any JSON, and JSON shaped like the real request."""
    return st.one_of(
        st.binary(max_size=300),
        almost_json.map(str.encode),
        json_values.map(lambda v: dumps(v).encode()),
        shaped.map(lambda v: dumps(v).encode()),
        shaped.map(lambda v: dumps(v).encode()),
    )


names = mostly(st.sampled_from(["alice", "bob", "a b", "", "x" * 65, "alice\n"]), finite_values)
LOGIN = st.fixed_dictionaries({}, optional={
    "username": names,
    "password": mostly(
        st.sampled_from([PASSWORD, "", "x" * 1025]), st.one_of(st.text(), finite_values)
    ),
})
EXPORT = st.fixed_dictionaries({}, optional={
    "report": mostly(st.sampled_from(["sample", "activity", "table", "nope"]), finite_values),
    "params": mostly(EXPORT_PARAMS, st.one_of(plain_objects, finite_values)),
})
SEND = st.fixed_dictionaries({}, optional={
    "user_id": names,
    "message": mostly(st.one_of(st.text(max_size=40), st.just("!error")), finite_values),
})
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x")
CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "text/plain", "application/json; charset=latin-1", *FORMS]
)
# Path segments and query values, quoted as a client would put them in a URL.
SEGMENTS = mostly(st.text(alphabet="abcdef0123456789-_", min_size=1, max_size=40),
                  st.text(min_size=1, max_size=140)).map(lambda t: quote(t, safe=""))
QUERY = st.one_of(st.text(max_size=20), st.integers(-5, 10**30).map(str)).map(
    lambda t: quote(t, safe="")
)


def form_refused(content_type: str | None, status: int, answer: Any) -> bool:
    """Tornado parses form bodies itself, before the handler runs (and so before any
    token is looked at): a malformed one is a bare 400."""
    return content_type in FORMS and status == 400 and answer["error"] == "http_error"


class Endpoints:
    def __init__(self, edge: int, relay: int, tokens: dict[str, str]) -> None:
        self.edge, self.relay, self.tokens = edge, relay, tokens

    async def call(
        self, port: int, method: str, path: str, body: bytes | None, credential: str | None,
        content_type: str | None = None,
    ) -> tuple[int, Any]:
        headers = {}
        if credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await AsyncHTTPClient().fetch(
            HTTPRequest(f"http://127.0.0.1:{port}{path}", method=method, headers=headers, body=body,
                        request_timeout=REQUEST_TIMEOUT, allow_nonstandard_methods=True),
            raise_error=False,
        )
        assert response.code != 599, f"{method} {path}: no answer ({response.error})"
        assert response.headers.get("Content-Type", "").startswith("application/json"), (
            method, path, response.code, response.body[:200])
        parsed = orjson.loads(response.body)
        if response.code >= 400:
            assert isinstance(parsed["error"], str) and isinstance(parsed["message"], str), parsed
        return response.code, parsed


@pytest.fixture
async def endpoints(
    make_edge: Callable[..., EdgeServer], relay: RelayServer, users: UserStore, amqp_url: str,
    exports_dir: Path, token_for: Callable[..., str],
) -> Endpoints:
    users.add("alice", PASSWORD)
    # A work queue for exports and no worker: a valid request is queued (202) and stays.
    connection = await connect(amqp_url, name="warren-test-exports-queue")
    async with connection:
        await declare_work_queue(await connection.channel(), Command.EXCEL_CREATE)
    edge = make_edge(
        WARREN_EXPORTS_DIR=str(exports_dir),
        WARREN_EDGE_LOGIN_ATTEMPTS_PER_ADDRESS="100000/minute",
        WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS="100000/minute",
        WARREN_EDGE_LOGIN_FAILURES_PER_USER="100000/minute",
    )
    await edge.start()
    tokens = {"alice": token_for("alice"), "bob": token_for("bob"), "key": SERVICE_KEY,
              "garbage": "not.a.token", "expired": token_for("alice", now=1_000_000)}
    return Endpoints(edge.port, relay.port, tokens)


credentials = st.sampled_from([None, "alice", "bob", "key", "garbage", "expired"])


@FUZZ
@given(body=bodies(LOGIN), content_type=CONTENT_TYPES)
async def test_login(endpoints: Endpoints, body: bytes, content_type: str | None) -> None:
    status, answer = await endpoints.call(
        endpoints.edge, "POST", "/auth/login", body, None, content_type
    )
    assert status in {200, 400, 401}, (body, answer)
    if status == 200:
        assert answer["user"] == "alice" and answer["token"]


@FUZZ
@given(body=bodies(EXPORT), content_type=CONTENT_TYPES, credential=credentials)
async def test_post_exports(
    endpoints: Endpoints, body: bytes, content_type: str | None, credential: str | None
) -> None:
    token = endpoints.tokens.get(credential) if credential else None
    status, answer = await endpoints.call(
        endpoints.edge, "POST", "/api/exports", body, token, content_type
    )
    if form_refused(content_type, status, answer):
        return
    if credential not in {"alice", "bob"}:
        assert status == 401, answer
        return
    assert status in {202, 400}, (body, answer)


@FUZZ
@given(body=bodies(SEND), content_type=CONTENT_TYPES, credential=credentials)
async def test_relay_send(
    endpoints: Endpoints, body: bytes, content_type: str | None, credential: str | None
) -> None:
    token = endpoints.tokens.get(credential) if credential else None
    status, answer = await endpoints.call(
        endpoints.relay, "POST", "/send", body, token, content_type
    )
    if form_refused(content_type, status, answer):
        return
    if status >= 500:
        # A valid ask the Cat answers with an error (the double's "!error"): documented.
        assert (status, answer["error"]) == (502, "cat_error"), (body, answer)
        return
    assert status in {200, 400, 401, 403}, (body, answer)


@FUZZ
@given(
    template=st.sampled_from([
        "/api/runs?limit={q}", "/api/runs/{s}", "/api/runs/{s}?tail={q}", "/api/exports/{s}",
        "/api/exports/{s}/file", "/api/exports?{q}={q}",
    ]),
    segment=SEGMENTS, query=QUERY, credential=credentials,
)
async def test_lookups(
    endpoints: Endpoints, template: str, segment: str, query: str, credential: str | None
) -> None:
    token = endpoints.tokens.get(credential) if credential else None
    path = template.format(s=segment, q=query)
    status, answer = await endpoints.call(endpoints.edge, "GET", path, None, token)
    if credential not in {"alice", "bob"}:
        assert status == 401, (path, answer)
        return
    assert status in {200, 400, 404}, (path, answer)


async def test_other_methods_are_405_json(endpoints: Endpoints) -> None:
    for port, path in ((endpoints.edge, "/auth/login"), (endpoints.edge, "/api/exports"),
                       (endpoints.edge, "/api/runs"), (endpoints.edge, "/api/exports/x"),
                       (endpoints.relay, "/send")):
        for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
            body = b"{}" if method in {"PUT", "PATCH"} else None
            status, answer = await endpoints.call(
                port, method, path, body, endpoints.tokens["alice"]
            )
            assert (status, answer["error"]) == (405, "http_error"), (method, path, answer)
