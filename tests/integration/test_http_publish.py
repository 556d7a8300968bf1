"""POST /api/publish and /api/publish/batch against a real edge, broker and database:
service keys, what reaches the sockets, and every refusal (docs/protocol.md 15)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from shared.db import create_schema, make_engine, session_factory
from shared.db.keys import KeyStore, Scope
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.tcp_proxy import TcpProxy

TIMEOUT = 10.0


@pytest.fixture
def keys(database_url: str) -> Iterator[KeyStore]:
    engine = make_engine(database_url)
    create_schema(engine)
    yield KeyStore(session_factory(engine))
    engine.dispose()


@pytest.fixture
def key(keys: KeyStore) -> str:
    return keys.add("billing", [Scope.PUBLISH])[1]


@pytest.fixture
async def http(edge: EdgeServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}", timeout=TIMEOUT) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(
    http: httpx.AsyncClient, path: str, key: str | None, body: Any
) -> tuple[int, dict[str, Any]]:
    response = await http.post(path, json=body, headers=bearer(key) if key else {})
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.json()


async def test_a_publish_reaches_the_users_socket_from_the_keys_service(
    edge: EdgeServer, http: httpx.AsyncClient, key: str, token_for: Callable[..., str]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    status, body = await post(http, "/api/publish", key, {
        "to": "user:alice", "type": "invoice.paid", "data": {"invoice": 42},
        "from": "service:billing", "id": "invoice-42-paid",  # as the edge would set it
    })
    assert (status, body) == (200, {
        "id": "invoice-42-paid", "status": "published", "from": "service:billing"
    })
    event = await alice.recv()
    assert (event["type"], event["id"], event["from"], event["to"], event["data"]) == (
        "invoice.paid", "invoice-42-paid", "service:billing", "user:alice", {"invoice": 42}
    )


async def test_a_forged_from_is_refused_and_nothing_is_published(
    edge: EdgeServer, http: httpx.AsyncClient, key: str, token_for: Callable[..., str]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    status, body = await post(http, "/api/publish", key, {
        "to": "user:alice", "type": "invoice.paid", "data": {}, "from": "user:bob",
    })
    assert status == 400
    assert (body["error"], body["field"]) == ("forged_sender", "from")
    # The next event is the first the socket sees.
    status, _ = await post(http, "/api/publish", key, {"to": "user:alice", "type": "after"})
    assert status == 200
    assert (await alice.recv())["type"] == "after"


async def test_a_batch_reaches_users_groups_and_everyone_and_lists_each_event(
    edge: EdgeServer, http: httpx.AsyncClient, key: str, token_for: Callable[..., str]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    bob = await Client.connect(edge.port, token_for("bob"))
    uuid = "3f2b8c1e-6a4d-4e9b-9f3a-0c7d5e1b2a99"
    status, body = await post(http, "/api/publish/batch", key, {"events": [
        {"to": "user:alice", "type": "a.one", "data": {"n": 1}},
        {"to": "group:team", "type": "a.two", "id": uuid},
        {"to": "broadcast", "type": "a.three", "data": {"n": 3}},
    ]})
    assert status == 200, body
    results = body["results"]
    assert [(r["index"], r["status"]) for r in results] == [(i, "published") for i in range(3)]
    assert results[1]["id"] == uuid
    got = [await alice.recv() for _ in range(3)]
    assert [(e["type"], e["id"], e["from"]) for e in got] == [
        (t, r["id"], "service:billing") for t, r in zip(("a.one", "a.two", "a.three"), results)
    ]
    assert got[1]["data"] == {}
    broadcast = await bob.recv()
    assert (broadcast["type"], broadcast["id"]) == ("a.three", results[2]["id"])


@pytest.mark.parametrize(
    ("event", "code", "field"),
    [
        ({"to": "user:bad name", "type": "x"}, "invalid_address", "to"),
        ({"to": "service:billing", "type": "x"}, "invalid_address", "to"),
        ({"type": "x"}, "invalid_address", "to"),
        ({"to": "user:alice", "type": "Not.A.Type"}, "invalid_type", "type"),
        ({"to": "user:alice"}, "invalid_type", "type"),
        ({"to": "user:alice", "type": "x", "data": [1]}, "invalid_data", "data"),
        ({"to": "user:alice", "type": "x", "data": {"s": "x" * 70_000}}, "too_large", "data"),
        ({"to": "user:alice", "type": "x", "id": "a/b"}, "invalid_id", "id"),
        ({"to": "user:alice", "type": "x", "id": "x" * 65}, "invalid_id", "id"),
        ({"to": "user:alice", "type": "x", "id": 7}, "invalid_id", "id"),
        ({"to": "user:alice", "type": "x", "date": {}}, "invalid_event", "date"),
        ([], "invalid_event", "event"),
    ],
)
async def test_a_bad_event_is_refused_400_naming_its_field(
    http: httpx.AsyncClient, key: str, event: Any, code: str, field: str
) -> None:
    status, body = await post(http, "/api/publish", key, event)
    assert (status, body["error"], body["field"]) == (400, code, field), body
    assert body["message"]


async def test_a_body_that_is_not_json_is_refused_400(http: httpx.AsyncClient, key: str) -> None:
    response = await http.post("/api/publish", content=b"{not json", headers=bearer(key))
    assert (response.status_code, response.json()["error"]) == (400, "bad_request")


async def test_a_batch_with_an_invalid_event_publishes_none_of_it(
    edge: EdgeServer, http: httpx.AsyncClient, key: str, token_for: Callable[..., str]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    status, body = await post(http, "/api/publish/batch", key, {"events": [
        {"to": "user:alice", "type": "first"},
        {"to": "user:alice", "type": "BAD"},
        {"to": "nobody", "type": "third"},
        {"to": "user:alice", "type": "fourth", "id": "same"},
        {"to": "user:alice", "type": "fifth", "id": "same"},
    ]})
    assert (status, body["error"]) == (400, "invalid_batch"), body
    assert [(e["index"], e["field"], e["error"]) for e in body["errors"]] == [
        (1, "type", "invalid_type"), (2, "to", "invalid_address"), (4, "id", "invalid_id"),
    ]
    # Nothing of it was published: the next event alice gets is the one published after.
    status, after = await post(http, "/api/publish", key, {"to": "user:alice", "type": "after"})
    assert status == 200
    assert (await alice.recv())["id"] == after["id"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"events": []}, "bad_request"),
        ({"events": {}}, "bad_request"),
        ([{"to": "user:alice", "type": "x"}], "bad_request"),
        ({"events": [{"to": "user:alice", "type": "x"}], "extra": 1}, "bad_request"),
        ({"events": [{"to": "user:alice", "type": "x"}] * 3}, "batch_too_long"),
    ],
)
async def test_a_batch_of_the_wrong_shape_or_length_is_refused_400(
    make_edge: Callable[..., EdgeServer], key: str, body: Any, code: str
) -> None:
    edge = make_edge(WARREN_EDGE_PUBLISH_BATCH_MAX="2")
    await edge.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}") as http:
        status, answer = await post(http, "/api/publish/batch", key, body)
    assert (status, answer["error"]) == (400, code), answer
    if code == "batch_too_long":
        assert answer["field"] == "events"


@pytest.mark.parametrize("path", ["/api/publish", "/api/publish/batch"])
@pytest.mark.parametrize(
    ("presented", "code"),
    [
        (None, "key_missing"),
        ("not-a-key", "key_invalid"),
        ("wk_0123456789abcdef_" + "A" * 43, "key_invalid"),  # well formed, unknown id
        ("WRONG_SECRET", "key_invalid"),
        ("USER_JWT", "key_invalid"),
    ],
)
async def test_a_request_without_a_good_key_is_refused_401(
    http: httpx.AsyncClient, key: str, token_for: Callable[..., str],
    path: str, presented: str | None, code: str,
) -> None:
    if presented == "WRONG_SECRET":
        presented = key[:-5] + ("AAAAA" if not key.endswith("AAAAA") else "BBBBB")
    elif presented == "USER_JWT":
        presented = token_for("alice", roles=("admin",))
    status, body = await post(http, path, presented, {"to": "user:alice", "type": "x"})
    assert (status, body["error"]) == (401, code), body


async def test_a_revoked_key_is_refused_403_at_once_without_the_cache(
    make_edge: Callable[..., EdgeServer], keys: KeyStore, key: str
) -> None:
    edge = make_edge(WARREN_EDGE_KEY_CACHE_S="0")
    await edge.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}") as http:
        event = {"to": "user:alice", "type": "x"}
        assert (await post(http, "/api/publish", key, event))[0] == 200
        [revoked] = keys.revoke("billing")
        assert key.startswith(f"wk_{revoked.id}_")
        status, body = await post(http, "/api/publish", key, event)
    assert (status, body["error"]) == (403, "key_revoked"), body


async def test_a_revoked_key_stops_working_once_the_edge_has_remembered_it_for_the_bound(
    edge: EdgeServer, http: httpx.AsyncClient, keys: KeyStore, key: str
) -> None:
    bound = edge.settings.publish.key_cache_s
    assert edge.deps is not None
    remembered = edge.deps.publishing.keys
    now = remembered.clock()
    remembered.clock = lambda: now
    event = {"to": "user:alice", "type": "x"}
    assert (await post(http, "/api/publish", key, event))[0] == 200
    keys.revoke("billing")
    # Within the bound the edge still trusts what it read; once it has passed, it reads
    # the key again and refuses it.
    remembered.clock = lambda: now + bound * 0.99
    assert (await post(http, "/api/publish", key, event))[0] == 200
    remembered.clock = lambda: now + bound
    status, body = await post(http, "/api/publish", key, event)
    assert (status, body["error"]) == (403, "key_revoked"), body


async def test_a_body_over_the_limit_is_refused_413_in_json(
    make_edge: Callable[..., EdgeServer], key: str
) -> None:
    edge = make_edge(WARREN_EDGE_PUBLISH_MAX_BODY_BYTES="2048")
    await edge.start()
    big = {"events": [{"to": "user:alice", "type": "x", "data": {"s": "x" * 3000}}]}

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000  # JSON whitespace: only the size is wrong

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}") as http:
        for path in ("/api/publish", "/api/publish/batch"):
            status, body = await post(http, path, key, big)
            assert (status, body["error"]) == (413, "body_too_large"), body
            # Without Content-Length: counted as it arrives.
            response = await http.post(path, content=chunked(), headers=bearer(key))
            assert (response.status_code, response.json()["error"]) == (413, "body_too_large")
            # Far past the limit: read to its end, then answered.
            status, body = await post(http, path, key, {"s": "x" * 200_000})
            assert (status, body["error"]) == (413, "body_too_large"), body
            # A client that waits for 100 Continue is answered before it sends the body.
            assert await expect_continue(edge.port, path, key, 1 << 30) == 413
        # Under the limit, on the same client, all is well.
        status, body = await post(http, "/api/publish", key, {"to": "user:alice", "type": "x"})
        assert status == 200, body


async def test_bodies_past_the_edges_general_limit_follow_the_publish_limit(
    http: httpx.AsyncClient, key: str, token_for: Callable[..., str], edge: EdgeServer
) -> None:
    # Other endpoints take 1 MiB; the publish endpoints WARREN_EDGE_PUBLISH_MAX_BODY_BYTES
    # (4 MiB by default), and past it they answer 413 in JSON, not Tornado's bare 400.
    alice = await Client.connect(edge.port, token_for("alice"))
    event = {"to": "user:alice", "type": "x", "data": {"s": "x" * 50_000}}
    status, body = await post(http, "/api/publish/batch", key, {"events": [event] * 40})
    assert status == 200, body
    assert (await alice.recv())["id"] == body["results"][0]["id"]
    status, body = await post(http, "/api/publish/batch", key, {"events": [event] * 100})
    assert (status, body["error"]) == (413, "body_too_large"), body


async def expect_continue(port: int, path: str, key: str, length: int) -> int:
    """Send only the headers of a POST of ``length`` bytes with ``Expect: 100-continue``;
    the status of the answer that comes instead of ``100 Continue``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        status_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_a_key_over_its_rate_is_refused_429_with_retry_after(
    make_edge: Callable[..., EdgeServer], keys: KeyStore, key: str
) -> None:
    edge = make_edge(WARREN_EDGE_PUBLISH_RATE="3/hour", WARREN_EDGE_PUBLISH_BATCH_MAX="3")
    await edge.start()
    other = keys.add("crm", [Scope.PUBLISH])[1]
    event = {"to": "user:alice", "type": "x"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}") as http:
        status, _ = await post(http, "/api/publish/batch", key, {"events": [event] * 2})
        assert status == 200
        # Two more do not fit in what is left: the whole batch is refused, none counted.
        response = await http.post("/api/publish/batch", json={"events": [event] * 2},
                                   headers=bearer(key))
        assert (response.status_code, response.json()["error"]) == (429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
        assert (await post(http, "/api/publish", key, event))[0] == 200
        assert (await post(http, "/api/publish", key, event))[0] == 429
        # Each key has its own allowance.
        assert (await post(http, "/api/publish", other, event))[0] == 200


def test_a_batch_longer_than_the_rate_allows_is_a_configuration_error() -> None:
    from shared.config import ConfigError
    from services.ws_edge.publishing import PublishSettings

    with pytest.raises(ConfigError, match="WARREN_EDGE_PUBLISH_BATCH_MAX"):
        PublishSettings.from_env({"WARREN_EDGE_PUBLISH_RATE": "10/second"})


async def test_a_publish_the_broker_does_not_confirm_is_503_and_says_which_events(
    make_edge: Callable[..., EdgeServer], amqp_url: str, key: str
) -> None:
    url = urlsplit(amqp_url)
    proxy = await TcpProxy(url.hostname or "127.0.0.1", url.port or 5672).start()
    try:
        edge = make_edge(WARREN_AMQP_URL=urlunsplit(
            url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}")))
        await edge.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}",
                                     timeout=TIMEOUT) as http:
            proxy.cut()
            status, body = await post(http, "/api/publish", key,
                                      {"to": "user:alice", "type": "x", "id": "one"})
            assert (status, body["error"], body["id"]) == (503, "unavailable", "one"), body
            status, body = await post(http, "/api/publish/batch", key, {"events": [
                {"to": "user:alice", "type": "x", "id": "a"},
                {"to": "group:team", "type": "y", "id": "b"},
            ]})
        assert (status, body["error"]) == (503, "unavailable"), body
        assert [(r["index"], r["id"], r["status"], r["error"]) for r in body["results"]] == [
            (0, "a", "failed", "unavailable"), (1, "b", "failed", "unavailable"),
        ]
        await asyncio.wait_for(edge.stop(), 30)
    finally:
        await proxy.close()


async def test_the_python_client_publishes_and_raises_the_edges_error_codes(
    edge: EdgeServer, keys: KeyStore, key: str, token_for: Callable[..., str]
) -> None:
    from warren import AsyncWarrenPublisher, PublishError, WarrenPublisher
    from warren.http import Event

    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    base = f"http://127.0.0.1:{edge.port}"
    async with AsyncWarrenPublisher(base, key) as warren:
        assert await warren.publish("user:alice", "invoice.paid", {"n": 1}, id="inv-1") == "inv-1"
        ids = await warren.publish_batch([
            Event("group:team", "build.done", {"ok": True}), Event("user:alice", "b.two", id="b2"),
        ])
        assert len(ids) == 2 and ids[1] == "b2"
        with pytest.raises(PublishError) as refused:
            await warren.publish_batch([Event("user:alice", "ok"), Event("user:a b", "ok")])
        assert (refused.value.status, refused.value.code) == (400, "invalid_batch")
        assert refused.value.errors[0]["index"] == 1 and refused.value.errors[0]["field"] == "to"
    got = [await alice.recv() for _ in range(3)]
    assert [(e["id"], e["from"]) for e in got] == [
        ("inv-1", "service:billing"), (ids[0], "service:billing"), ("b2", "service:billing"),
    ]

    # The blocking client, on a thread of its own: the edge runs on this test's loop.
    def blocking() -> tuple[str, PublishError, PublishError]:
        with WarrenPublisher(base, key) as warren:
            published = warren.publish("user:alice", "sync.event", {"n": 2})
            try:
                warren.publish("user:alice", "Bad Type")
            except PublishError as exc:
                bad = exc
            keys.revoke("billing")
        with WarrenPublisher(base, "wk_nope") as stranger:
            try:
                stranger.publish("user:alice", "x")
            except PublishError as exc:
                unknown = exc
        return published, bad, unknown

    published, bad, unknown = await asyncio.to_thread(blocking)
    assert (await alice.recv())["id"] == published
    assert (bad.status, bad.code, bad.field) == (400, "invalid_type", "type")
    assert (unknown.status, unknown.code) == (401, "key_invalid")


async def test_the_python_client_says_when_the_edge_cannot_be_reached() -> None:
    from warren import AsyncWarrenPublisher, PublishError

    # A port bound but not listening: connections to it are refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        async with AsyncWarrenPublisher(f"http://127.0.0.1:{port}", "wk_x") as warren:
            with pytest.raises(PublishError) as refused:
                await warren.publish("user:alice", "x")
    assert (refused.value.status, refused.value.code) == (None, "unreachable")
