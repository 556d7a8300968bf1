"""Whose address the edge counts logins under: forwarding headers are believed only from
``WARREN_TRUSTED_PROXIES``, and a guesser cannot lock a user out of her own address.

All of 127.0.0.0/8 is loopback: each party here connects from an address of its own, and
the proxy in front of the edge is a real HTTP reverse proxy (tests/support/forwarding_proxy.py)
that appends ``X-Forwarded-For`` as nginx does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from shared.db import UserStore
from services.ws_edge.server import EdgeServer
from tests.support.forwarding_proxy import ForwardingProxy

PROXY_SOURCE = "127.0.0.3"  # the proxy's address, as the edge sees it
CAROL_HOME = "127.0.0.5"
ATTACKER = "127.0.0.2"
CAROL = b'{"username": "carol", "password": "carol-pw-42"}'


def guess(n: int) -> bytes:
    return b'{"username": "carol", "password": "guess-%d"}' % n


async def login(
    base_url: str, body: bytes, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, object], str | None]:
    """POST /auth/login from ``source``; status, JSON body and Retry-After."""
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(f"{base_url}/auth/login", method="POST", body=body, headers=headers,
                    network_interface=source),
        raise_error=False,
    )
    assert response.headers["Content-Type"] == "application/json", response.body
    return response.code, orjson.loads(response.body), response.headers.get("Retry-After")


def forged(n: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"203.0.113.{n}", "X-Real-IP": f"198.51.100.{n}"}


@pytest.fixture
def carol(users: UserStore) -> UserStore:
    users.add("carol", "carol-pw-42")
    return users


@pytest.fixture
async def proxied(
    make_edge: Callable[..., EdgeServer],
) -> AsyncIterator[Callable[..., Awaitable[ForwardingProxy]]]:
    """Start an edge that trusts the proxy's address, and the proxy in front of it."""
    proxies: list[ForwardingProxy] = []

    async def build(**env: str) -> ForwardingProxy:
        edge = make_edge(WARREN_TRUSTED_PROXIES=f"{PROXY_SOURCE}/32", **env)
        await edge.start()
        proxy = ForwardingProxy(f"http://127.0.0.1:{edge.port}", source=PROXY_SOURCE).start()
        proxies.append(proxy)
        return proxy

    yield build
    for proxy in proxies:
        await proxy.stop()


async def test_forged_forwarding_headers_from_an_untrusted_client_are_ignored(
    make_edge: Callable[..., EdgeServer], carol: UserStore, caplog: pytest.LogCaptureFixture,
) -> None:
    edge = make_edge(WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS="3/minute")
    await edge.start()
    base = f"http://127.0.0.1:{edge.port}"
    with caplog.at_level(logging.INFO, "tornado.access"):
        for n in range(3):
            status, body, _ = await login(base, guess(n), source=ATTACKER, headers=forged(n))
            assert (status, body["error"]) == (401, "invalid_credentials")
        # Every guess counted against the real peer: the window is full whatever it claims.
        status, body, retry = await login(base, guess(3), source=ATTACKER, headers=forged(3))
    assert (status, body["error"]) == (429, "rate_limited")
    assert retry is not None and 1 <= int(retry) <= 60
    logged = {getattr(r, "remote", None) for r in caplog.records if r.name == "tornado.access"}
    assert logged == {ATTACKER}
    # Carol, from her own address, is not locked out by it.
    status, body, _ = await login(base, CAROL, source=CAROL_HOME)
    assert (status, body["user"]) == (200, "carol")


async def test_through_a_trusted_proxy_the_forwarded_client_is_counted(
    proxied: Callable[..., Awaitable[ForwardingProxy]], carol: UserStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await proxied(WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS="3/minute")
    with caplog.at_level(logging.INFO, "tornado.access"):
        # The attacker's own X-Forwarded-For is kept by the proxy, left of the address
        # the proxy appends: the edge reads the right-most hop it does not trust.
        for n in range(3):
            status, body, _ = await login(proxy.url, guess(n), source=ATTACKER, headers=forged(n))
            assert (status, body["error"]) == (401, "invalid_credentials")
        status, body, _ = await login(proxy.url, guess(3), source=ATTACKER, headers=forged(3))
        assert (status, body["error"]) == (429, "rate_limited")
        # Carol through the same proxy is another client: her correct password works.
        status, body, _ = await login(proxy.url, CAROL, source=CAROL_HOME)
    assert (status, body["user"]) == (200, "carol")
    logged = [getattr(r, "remote", None) for r in caplog.records if r.name == "tornado.access"]
    assert logged == [ATTACKER] * 4 + [CAROL_HOME]


async def test_guesses_from_many_addresses_cannot_lock_carol_out_of_her_own(
    proxied: Callable[..., Awaitable[ForwardingProxy]], carol: UserStore,
) -> None:
    proxy = await proxied(
        WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS="2/minute",
        WARREN_EDGE_LOGIN_FAILURES_PER_USER="6/minute",
    )
    status, _, _ = await login(proxy.url, CAROL, source=CAROL_HOME)  # her usual address
    assert status == 200
    # A guesser with many addresses fills the per-user ceiling, two guesses from each.
    for n in range(6):
        status, body, _ = await login(proxy.url, guess(n), source=f"127.0.1.{n // 2 + 1}")
        assert (status, body["error"]) == (401, "invalid_credentials")
    for n, source in enumerate(("127.0.1.1", "127.0.1.9")):
        status, body, retry = await login(proxy.url, guess(10 + n), source=source)
        assert (status, body["error"]) == (429, "rate_limited")
        # The ceiling is a short window: a new address waits a minute at most.
        assert retry is not None and 1 <= int(retry) <= 60
    # Not from an address carol signed in from: the guesses never counted there.
    status, body, _ = await login(proxy.url, CAROL, source=CAROL_HOME)
    assert (status, body["user"]) == (200, "carol")


@pytest.mark.parametrize(
    "forwarded",
    ["not-an-address", "999.1.1.1", "127.0.0.9, ::zz", "[::1", ", , ,", "1.2.3.4:bad",
     "x" * 4000],
)
async def test_garbage_forwarding_headers_fall_back_to_the_peer(
    make_edge: Callable[..., EdgeServer], carol: UserStore, forwarded: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The test itself is the trusted proxy here, writing whatever it likes.
    edge = make_edge(WARREN_TRUSTED_PROXIES="127.0.0.0/8")
    await edge.start()
    base = f"http://127.0.0.1:{edge.port}"
    with caplog.at_level(logging.INFO, "tornado.access"):
        status, body, _ = await login(
            base, CAROL, source=PROXY_SOURCE,
            headers={"X-Forwarded-For": forwarded, "X-Real-IP": forwarded},
        )
    assert (status, body["user"]) == (200, "carol")
    (record,) = [r for r in caplog.records if r.name == "tornado.access"]
    # A garbage hop ends the walk at the last address known to be real: the peer.
    assert getattr(record, "remote") == PROXY_SOURCE


async def test_x_real_ip_is_read_only_from_a_trusted_peer(
    make_edge: Callable[..., EdgeServer], carol: UserStore, caplog: pytest.LogCaptureFixture,
) -> None:
    edge = make_edge(WARREN_TRUSTED_PROXIES=f"{PROXY_SOURCE}/32")
    await edge.start()
    base = f"http://127.0.0.1:{edge.port}"
    with caplog.at_level(logging.INFO, "tornado.access"):
        for source in (PROXY_SOURCE, ATTACKER):
            await login(base, CAROL, source=source, headers={"X-Real-IP": "192.0.2.7"})
    logged = [getattr(r, "remote", None) for r in caplog.records if r.name == "tornado.access"]
    assert logged == ["192.0.2.7", ATTACKER]
