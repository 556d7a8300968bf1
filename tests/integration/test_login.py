"""POST /auth/login against users in a real database (SQLite, and PostgreSQL when present)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from argon2 import PasswordHasher
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from shared.db import UserExists, UserStore, create_schema, make_engine, session_factory
from services.ws_edge.server import EdgeServer
from tests.support.client import Client

async def _login(port: int, body: bytes) -> tuple[int, dict[str, object]]:
    try:
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/auth/login", method="POST", body=body
        )
    except HTTPClientError as exc:
        assert exc.response is not None
        assert exc.response.headers["Content-Type"] == "application/json"
        return exc.code, orjson.loads(exc.response.body)
    return response.code, orjson.loads(response.body)


async def test_login_returns_a_token_that_opens_a_socket(edge: EdgeServer, users: UserStore) -> None:
    users.add("alice", "correct horse", ("team",), ("admin",))
    status, body = await _login(edge.port, b'{"username": "alice", "password": "correct horse"}')
    assert status == 200
    assert (body["user"], body["groups"], body["roles"], body["token_type"]) == (
        "alice", ["team"], ["admin"], "Bearer"
    )
    client = await Client.connect(edge.port, str(body["token"]))
    assert client.welcome["data"]["groups"] == ["team"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"username": "alice", "password": "wrong"}', 401, "invalid_credentials"),
        (b'{"username": "nobody", "password": "x"}', 401, "invalid_credentials"),
        (b'{"username": "../etc", "password": "x"}', 401, "invalid_credentials"),
        (b"not json", 400, "bad_request"),
        (b"[]", 400, "bad_request"),
        (b'{"username": 1, "password": "x"}', 400, "bad_request"),
        (b'{"username": "alice"}', 400, "bad_request"),
        (b'{"username": "alice", "password": "' + b"x" * 2000 + b'"}', 400, "bad_request"),
    ],
)
async def test_bad_logins_get_clear_json_errors(
    edge: EdgeServer, users: UserStore, body: bytes, status: int, code: str
) -> None:
    users.add("alice", "correct horse")
    got_status, got = await _login(edge.port, body)
    assert (got_status, got["error"]) == (status, code)
    assert got["message"]


@pytest.mark.postgres
def test_user_store_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        create_schema(engine)
        store = UserStore(session_factory(engine))
        store.add("alice", "pw", ("team", "ops"), ("admin",))
        with pytest.raises(UserExists):
            store.add("alice", "pw2")
        record = store.authenticate("alice", "pw")
        assert record is not None and record.groups == ("ops", "team") and record.roles == ("admin",)
        assert store.authenticate("alice", "nope") is None
        assert store.count() == 1
    finally:
        engine.dispose()


async def test_login_against_postgresql(
    make_edge: Callable[..., EdgeServer], postgres_url: str
) -> None:
    engine = make_engine(postgres_url)
    create_schema(engine)
    UserStore(session_factory(engine)).add("pgalice", "pw", ("team",))
    engine.dispose()
    edge = make_edge(WARREN_DATABASE_URL=postgres_url)
    await edge.start()
    status, body = await _login(edge.port, b'{"username": "pgalice", "password": "pw"}')
    assert status == 200 and body["groups"] == ["team"]


def test_user_store_takes_its_password_hasher(database_url: str) -> None:
    engine = make_engine(database_url)
    create_schema(engine)
    fast = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    hashed: list[str] = []

    def hasher(password: str) -> str:
        hashed.append(password)
        return fast.hash(password)

    store = UserStore(session_factory(engine), hasher=hasher)
    store.add("quick", "pw")
    assert hashed == ["pw"]
    assert store.authenticate("quick", "pw") is not None
    assert store.authenticate("quick", "nope") is None
    engine.dispose()


async def test_brute_force_is_refused_with_429_before_the_password_is_checked(
    make_edge: Callable[..., EdgeServer], users: UserStore
) -> None:
    users.add("alice", "correct horse")
    edge = make_edge(WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS="3/minute")
    await edge.start()
    for guess in (b"a", b"b", b"c"):
        status, body = await _login(edge.port, b'{"username": "alice", "password": "%s"}' % guess)
        assert (status, body["error"]) == (401, "invalid_credentials")
    # Now even the right password is refused, so guessing learns nothing more.
    try:
        await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{edge.port}/auth/login", method="POST",
            body=b'{"username": "alice", "password": "correct horse"}',
        )
        raise AssertionError("the fourth attempt was let through")
    except HTTPClientError as exc:
        assert exc.code == 429 and exc.response is not None
        assert 1 <= int(exc.response.headers["Retry-After"]) <= 60
        body = orjson.loads(exc.response.body)
    assert body["error"] == "rate_limited" and "retry in" in body["message"]
    metrics = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{edge.port}/metrics")).body.decode()
    assert 'warren_edge_logins_total{outcome="rate_limited"} 1.0' in metrics
    # Another user from the same address is not locked out by alice's guesser.
    users.add("bob", "pw")
    status, _ = await _login(edge.port, b'{"username": "bob", "password": "pw"}')
    assert status == 200
