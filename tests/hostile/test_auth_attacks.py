"""Token attacks against a real edge, on the WebSocket handshake and on an HTTP API.

The edge runs with RS256 (the algorithm where key confusion is possible) or HS256, and
checks that users still exist (``WARREN_EDGE_CHECK_USERS``). Every forged, altered,
expired or orphaned token is refused before anything opens: ``401`` with a JSON body
whose ``error`` says why. The same attacks on an HS256 edge's handshake are in
tests/integration/test_handshake.py; guessing passwords (429) is in
tests/integration/test_login.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import text
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from shared.auth.tokens import DEV_SECRET
from shared.db import UserStore, make_engine, session_factory
from shared.db.models import User
from services.ws_edge.server import EdgeServer
from tests.support.client import UPGRADE, Client


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


@cache
def rsa_pair(name: str) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return KeyPair(private, public)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str = "alice", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "groups": ["team"], "roles": [], "iat": now, "exp": now + 600, **overrides}


def hand_made(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand, as an attacker would: any header, an HMAC or no signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if hmac_key is None:
        return f"{signing_input}."
    mac = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


class Signer:
    """Signs as the edge's own issuer does: RS256 with its private key, or HS256."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.key = rsa_pair("edge").private if algorithm == "RS256" else DEV_SECRET

    def sign(self, payload: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(payload, self.key, algorithm=self.algorithm, headers=headers or None)


def tampered(signer: Signer) -> str:
    header, _payload, signature = signer.sign(claims("bob")).split(".")
    forged = b64(json.dumps(claims("alice", roles=["admin"])).encode())
    return f"{header}.{forged}.{signature}"


def attacker_jwk() -> dict[str, Any]:
    public = serialization.load_pem_public_key(rsa_pair("attacker").public.encode())
    return dict(json.loads(RSAAlgorithm.to_jwk(public)))  # type: ignore[arg-type]


# name -> (token made with the edge's signer, the error the edge must answer)
ATTACKS: dict[str, tuple[Callable[[Signer], str], str]] = {
    "alg_none": (
        lambda s: hand_made({"alg": "none", "typ": "JWT"}, claims(), None), "token_invalid"
    ),
    "alg_None": (lambda s: hand_made({"alg": "None"}, claims(), None), "token_invalid"),
    "alg_NONE_with_a_signature": (
        lambda s: hand_made({"alg": "NONE"}, claims(), b"anything"), "token_invalid"
    ),
    # Key confusion: the public key is public; a MAC keyed with it must not verify.
    "hs256_keyed_with_the_public_key": (
        lambda s: hand_made({"alg": "HS256", "typ": "JWT"}, claims(),
                            rsa_pair("edge").public.encode()),
        "token_invalid",
    ),
    "hs256_keyed_with_the_stripped_public_key": (
        lambda s: hand_made({"alg": "HS256"}, claims(),
                            rsa_pair("edge").public.strip().encode()),
        "token_invalid",
    ),
    "hs512_with_the_hs256_secret": (
        lambda s: jwt.encode(claims(), DEV_SECRET, algorithm="HS512"), "token_invalid"
    ),
    "signed_by_another_key": (
        lambda s: jwt.encode(claims(), rsa_pair("attacker").private, algorithm="RS256"),
        "token_invalid",
    ),
    "another_key_embedded_in_the_header": (
        lambda s: jwt.encode(claims(), rsa_pair("attacker").private, algorithm="RS256",
                             headers={"jwk": attacker_jwk(), "kid": "attacker"}),
        "token_invalid",
    ),
    "key_url_in_the_header": (
        lambda s: jwt.encode(claims(), rsa_pair("attacker").private, algorithm="RS256",
                             headers={"jku": "http://127.0.0.1:9/keys.json"}),
        "token_invalid",
    ),
    "tampered_payload": (tampered, "token_invalid"),
    "signature_stripped": (lambda s: s.sign(claims()).rsplit(".", 1)[0] + ".", "token_invalid"),
    "expired": (
        lambda s: s.sign(claims(iat=int(time.time()) - 120, exp=int(time.time()) - 60)),
        "token_expired",
    ),
    "issued_in_the_future": (
        lambda s: s.sign(claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200)),
        "token_invalid",
    ),
    "no_expiry": (
        lambda s: s.sign({k: v for k, v in claims().items() if k != "exp"}), "token_invalid"
    ),
    # NumericDate claims that PyJWT alone would coerce with int() (docs/protocol.md 4.2).
    "expiry_as_a_string": (
        lambda s: s.sign(claims(exp=str(int(time.time()) + 600))), "token_invalid"
    ),
    "issued_at_as_a_bool": (lambda s: s.sign(claims(iat=True)), "token_invalid"),
    "not_before_as_a_string": (
        lambda s: s.sign(claims(nbf=str(int(time.time()) - 60))), "token_invalid"
    ),
    "not_before_null": (lambda s: s.sign(claims(nbf=None)), "token_invalid"),
    "expiry_nested": (
        lambda s: s.sign(claims(exp={"value": int(time.time()) + 600})), "token_invalid"
    ),
    # Properly signed, but for users the edge does not know.
    "deleted_user": (lambda s: s.sign(claims("carol")), "unknown_user"),
    "never_existed": (lambda s: s.sign(claims("ghost")), "unknown_user"),
}


def edge_env(algorithm: str) -> dict[str, str]:
    env = {"WARREN_JWT_ALGORITHM": algorithm, "WARREN_EDGE_CHECK_USERS": "true"}
    if algorithm == "RS256":
        env |= {"WARREN_JWT_PUBLIC_KEY": rsa_pair("edge").public,
                "WARREN_JWT_PRIVATE_KEY": rsa_pair("edge").private}
    return env


@pytest.fixture(params=["RS256", "HS256"])
async def guarded(
    request: pytest.FixtureRequest, make_edge: Callable[..., EdgeServer], users: UserStore,
    database_url: str,
) -> tuple[EdgeServer, Signer]:
    """An edge that checks its users; alice exists, carol existed until just now."""
    # Nobody logs in here: skip the password hashing.
    engine = make_engine(database_url)
    quick = UserStore(session_factory(engine), hasher=lambda password: "unused")
    quick.add("alice", "pw", groups=("team",))
    quick.add("carol", "pw")
    engine.dispose()
    delete_user(database_url, "carol")
    edge = make_edge(**edge_env(request.param))
    await edge.start()
    return edge, Signer(request.param)


def delete_user(database_url: str, user_id: str) -> None:
    engine = make_engine(database_url)
    with session_factory(engine).begin() as session:
        user = session.get(User, user_id)
        assert user is not None
        session.delete(user)
    engine.dispose()


async def handshake(port: int, token: str) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(f"http://127.0.0.1:{port}/ws?token={token}", headers=UPGRADE),
        raise_error=False,
    )
    return response.code, orjson.loads(response.body) if response.body else None


async def api(port: int, token: str, path: str = "/api/runs") -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"},
        raise_error=False,
    )
    assert response.headers["Content-Type"].startswith("application/json")
    return response.code, orjson.loads(response.body)


async def test_a_genuine_token_opens_the_socket_and_the_api(
    guarded: tuple[EdgeServer, Signer],
) -> None:
    edge, signer = guarded
    token = signer.sign(claims())
    client = await Client.connect(edge.port, token)
    assert client.welcome["data"]["user"] == "alice"
    assert (await api(edge.port, token))[0] == 200
    client.close()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_attack_is_refused_with_401_json(
    guarded: tuple[EdgeServer, Signer], attack: str
) -> None:
    edge, signer = guarded
    make, code = ATTACKS[attack]
    token = make(signer)
    for status, body in (await handshake(edge.port, token), await api(edge.port, token)):
        assert (status, body["error"]) == (401, code), body
        assert body["message"]
    refused = edge.metrics.registry.get_sample_value(
        "warren_edge_handshakes_refused_total", {"reason": code}
    )
    assert refused == 1
    assert edge.metrics.connections._value.get() == 0


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_attack_by_refresh_is_refused_and_changes_nothing(
    guarded: tuple[EdgeServer, Signer], attack: str
) -> None:
    # The same tokens in band (auth.refresh, docs/protocol.md 6.7), on a socket opened
    # with a genuine one.
    edge, signer = guarded
    make, code = ATTACKS[attack]
    client = await Client.connect(edge.port, signer.sign(claims()))
    reply = await client.request(
        {"type": "auth.refresh", "ref": 1, "data": {"token": make(signer)}}
    )
    assert (reply["type"], reply["data"]["code"]) == ("error", code), reply
    assert reply["data"]["message"]
    # Still alice with her own roles: a forged admin role did not stick.
    broadcast = await client.request(
        {"type": "message.send", "ref": 2, "to": "broadcast", "data": {}}
    )
    assert broadcast["data"]["code"] == "forbidden"
    client.close()


async def test_a_user_deleted_while_holding_a_token_is_refused_from_then_on(
    make_edge: Callable[..., EdgeServer], users: UserStore, database_url: str,
) -> None:
    users.add("dave", "pw-dave-123")
    edge = make_edge(**edge_env("RS256"))
    await edge.start()
    login = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{edge.port}/auth/login", method="POST",
        body=orjson.dumps({"username": "dave", "password": "pw-dave-123"}),
    )
    token = orjson.loads(login.body)["token"]
    open_socket = await Client.connect(edge.port, token)
    assert (await api(edge.port, token))[0] == 200

    delete_user(database_url, "dave")
    status, body = await handshake(edge.port, token)
    assert (status, body["error"]) == (401, "unknown_user")
    assert "dave" in body["message"]
    # The refused upgrade let go of what it took before the user was read: its keys
    # and its place among the user's sockets. The open socket holds its own.
    assert edge.deps is not None
    assert (edge.deps.bindings.holders("user.dave"), edge.hub.slots("dave")) == (1, 1)
    status, body = await api(edge.port, token, "/api/exports")
    assert (status, body["error"]) == (401, "unknown_user")
    # Only new connections are checked: the socket opened before stays open until its
    # token expires (docs/protocol.md 5.1).
    reply = await open_socket.request(
        {"type": "message.send", "ref": 1, "to": "user:dave", "data": {}}
    )
    assert reply["type"] == "ack"
    # ...and cannot outlive it by refreshing: a refresh is checked as a new connection.
    reply = await open_socket.request({"type": "auth.refresh", "ref": 2, "data": {"token": token}})
    assert (reply["type"], reply["data"]["code"]) == ("error", "unknown_user")


async def test_without_the_user_check_tokens_of_unknown_users_are_accepted(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    # WARREN_ENV=development turns it off by default (tokens from tests and tools).
    edge = make_edge()
    await edge.start()
    assert not edge.settings.check_users
    client = await Client.connect(edge.port, token_for("nobody-in-the-table"))
    assert client.welcome["data"]["user"] == "nobody-in-the-table"


async def test_an_unreadable_user_table_is_a_json_error_then_recovers(
    guarded: tuple[EdgeServer, Signer], database_url: str,
) -> None:
    edge, signer = guarded
    token = signer.sign(claims())
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE users RENAME TO users_away"))
    try:
        for status, body in (await handshake(edge.port, token), await api(edge.port, token)):
            assert (status, body["error"]) == (503, "database_unavailable"), body
            assert "users" not in body["message"]  # no SQL, no table names
        # The refused upgrade bound its keys before the read: it let go of them.
        assert edge.deps is not None and edge.deps.bindings.holders("user.alice") == 0
        assert edge.hub.slots("alice") == 0
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE users_away RENAME TO users"))
        engine.dispose()
    client = await Client.connect(edge.port, token)
    assert client.welcome["data"]["user"] == "alice"
