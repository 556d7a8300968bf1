"""JWTs: issuing, verifying with a pinned algorithm, and the settings that pick the keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.auth.tokens import (
    DEV_SECRET,
    HS256,
    MIN_SECRET_BYTES,
    RS256,
    AuthSettings,
    Identity,
    TokenError,
    TokenService,
    admin_role,
)
from shared.config import ConfigError

SECRET = "s" * 64  # long enough for HS512 too, so pyjwt does not warn
OTHER_SECRET = "o" * 64


def hs_service(secret: str = SECRET, ttl: int = 3600) -> TokenService:
    return TokenService(AuthSettings(HS256, secret, secret, ttl))


_DROP: Any = object()  # a claims() override that removes the claim


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "groups": ["ops"],
        "roles": ["admin"],
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(signature)}"


def refused(service: TokenService, token: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        service.verify(token)
    return info.value


@cache
def rsa_keys() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


# --- HS256 ----------------------------------------------------------------------------


def test_issue_then_verify_gives_the_identity() -> None:
    service = hs_service()
    now = int(time.time())
    token = service.issue("alice", ("ops", "dev"), ("admin",), now=now + 0.9, ttl_s=600)
    identity = service.verify(token)
    assert identity == Identity(
        user_id="alice", groups=("ops", "dev"), roles=("admin",), expires_at=float(now + 600)
    )
    assert identity.has_role("admin")
    assert not identity.has_role("ops")


def test_issued_claims() -> None:
    token = hs_service(ttl=120).issue("alice", ("g",), ("r",), now=1_700_000_000.7)
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert payload == {
        "sub": "alice",
        "groups": ["g"],
        "roles": ["r"],
        "iat": 1_700_000_000,
        "exp": 1_700_000_120,
    }


def test_issue_uses_the_configured_ttl_by_default() -> None:
    service = hs_service(ttl=3600)
    assert service.ttl_s == 3600
    before = time.time()
    identity = service.verify(service.issue("alice"))
    assert before + 3600 - 1 <= identity.expires_at <= time.time() + 3600


def test_verify_accepts_a_token_from_pyjwt_with_the_same_secret() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert hs_service().verify(token).user_id == "alice"


def test_groups_and_roles_are_optional_and_deduplicated() -> None:
    service = hs_service()
    bare = service.verify(jwt.encode(claims(groups=_DROP, roles=_DROP), SECRET, "HS256"))
    assert (bare.groups, bare.roles) == ((), ())
    token = jwt.encode(claims(groups=["a", "b", "a"], roles=["r", "r"]), SECRET, "HS256")
    identity = service.verify(token)
    assert identity.groups == ("a", "b")
    assert identity.roles == ("r",)


def test_issue_without_a_signing_key_is_a_config_error() -> None:
    _, public = rsa_keys()
    service = TokenService(AuthSettings(RS256, public, None, 60))
    with pytest.raises(ConfigError):
        service.issue("alice")


def test_alg_none_is_refused() -> None:
    token = hand_made({"alg": "none", "typ": "JWT"}, claims(), None)
    assert refused(hs_service(), token).code == "token_invalid"


def test_alg_none_with_only_two_segments_is_refused() -> None:
    token = hand_made({"alg": "none"}, claims(), None).rstrip(".")
    assert token.count(".") == 1
    assert refused(hs_service(), token).code == "token_invalid"


def test_alg_none_from_pyjwt_is_refused() -> None:
    token = jwt.encode(claims(), "", algorithm="none")  # pyjwt takes "" as no key
    assert refused(hs_service(), token).code == "token_invalid"


def test_hs512_with_the_same_secret_is_refused() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    error = refused(hs_service(), token)
    assert error.code == "token_invalid"
    assert "algorithm" in error.message


def test_hand_made_hs256_token_verifies() -> None:
    # Guards the hand-made helper used for the negative tests below.
    token = hand_made({"alg": "HS256", "typ": "JWT"}, claims(), SECRET.encode())
    assert hs_service().verify(token).user_id == "alice"


def test_header_claiming_hs256_but_other_secret_is_refused() -> None:
    token = jwt.encode(claims(), OTHER_SECRET, algorithm="HS256")
    error = refused(hs_service(), token)
    assert error.code == "token_invalid"
    assert "signature" in error.message


def test_tampered_payload_is_refused() -> None:
    token = jwt.encode(claims(sub="alice"), SECRET, algorithm="HS256")
    header, _, signature = token.split(".")
    forged = b64(json.dumps(claims(sub="mallory")).encode())
    assert refused(hs_service(), f"{header}.{forged}.{signature}").code == "token_invalid"


def test_tampered_signature_is_refused() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert refused(hs_service(), f"{head}.{payload}.{flipped}").code == "token_invalid"


@pytest.mark.parametrize("token", ["", "garbage", "a.b", "a.b.c", "...", "x" * 300])
def test_garbage_is_refused(token: str) -> None:
    assert refused(hs_service(), token).code == "token_invalid"


def test_expired_token_is_refused_with_token_expired() -> None:
    service = hs_service()
    token = service.issue("alice", now=time.time() - 7200, ttl_s=3600)
    error = refused(service, token)
    assert error.code == "token_expired"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
def test_missing_required_claim_is_refused(claim: str) -> None:
    token = jwt.encode(claims(**{claim: _DROP}), SECRET, algorithm="HS256")
    error = refused(hs_service(), token)
    assert error.code == "token_invalid"


def test_missing_exp_message_names_the_claim() -> None:
    token = jwt.encode(claims(exp=_DROP), SECRET, algorithm="HS256")
    assert "'exp'" in refused(hs_service(), token).message


@pytest.mark.parametrize(
    "sub", ["", "a.b", "*", "#", "a b", "x" * 65, "é", 5, None, ["alice"], {"id": "a"}]
)
def test_bad_sub_is_refused(sub: object) -> None:
    token = hand_made({"alg": "HS256"}, claims(sub=sub), SECRET.encode())
    assert refused(hs_service(), token).code == "token_invalid"


@pytest.mark.parametrize(
    "groups", ["ops", [1], ["a.b"], ["*"], [None], {"ops": 1}, None, ["x" * 65]]
)
def test_bad_groups_are_refused(groups: object) -> None:
    token = jwt.encode(claims(groups=groups), SECRET, algorithm="HS256")
    error = refused(hs_service(), token)
    assert error.code == "token_invalid"
    assert "groups" in error.message


@pytest.mark.parametrize("roles", ["admin", [1], ["ad min"], ["#"], [None], {}, None])
def test_bad_roles_are_refused(roles: object) -> None:
    token = jwt.encode(claims(roles=roles), SECRET, algorithm="HS256")
    error = refused(hs_service(), token)
    assert error.code == "token_invalid"
    assert "roles" in error.message


def test_non_numeric_exp_is_refused() -> None:
    token = jwt.encode(claims(exp="tomorrow"), SECRET, algorithm="HS256")
    assert refused(hs_service(), token).code == "token_invalid"


def _not_numeric(now: int) -> list[object]:
    """Values PyJWT's int() would turn into a time, and other non-numbers."""
    return [str(now + 600), str(now - 600), True, False, None, [now], {"t": now}, f"{now}.5"]


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("index", range(8))
def test_numeric_date_claims_must_be_numbers(claim: str, index: int) -> None:
    value = _not_numeric(int(time.time()))[index]
    token = jwt.encode(claims(**{claim: value}), SECRET, algorithm="HS256")
    error = refused(hs_service(), token)
    assert error.code == "token_invalid", (claim, value, error.message)
    assert repr(claim) in error.message


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_non_finite_numeric_dates_are_refused(claim: str) -> None:
    payload = claims()
    payload[claim] = float("inf")
    token = hand_made({"alg": "HS256", "typ": "JWT"}, payload, SECRET.encode())
    assert refused(hs_service(), token).code == "token_invalid"


def test_fractional_numeric_dates_are_accepted() -> None:
    now = time.time()
    token = jwt.encode(claims(iat=now - 1.5, nbf=now - 1.5, exp=now + 600.25), SECRET,
                       algorithm="HS256")
    assert hs_service().verify(token).expires_at == pytest.approx(now + 600.25)


def test_token_error_carries_code_and_message() -> None:
    error = TokenError("token_invalid", "why")
    assert error.code == "token_invalid"
    assert error.message == "why"
    assert str(error) == "why"


# --- RS256 ----------------------------------------------------------------------------


def rs_service(with_private: bool = True) -> TokenService:
    private, public = rsa_keys()
    return TokenService(AuthSettings(RS256, public, private if with_private else None, 3600))


def test_rs256_verifies_a_token_signed_with_the_private_key() -> None:
    private, _ = rsa_keys()
    token = jwt.encode(claims(groups=["g"]), private, algorithm="RS256")
    identity = rs_service(with_private=False).verify(token)
    assert identity.user_id == "alice"
    assert identity.groups == ("g",)


def test_rs256_issue_then_verify() -> None:
    service = rs_service()
    token = service.issue("bob", ("g",), ("r",))
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert service.verify(token).user_id == "bob"


def test_rs256_refuses_a_token_signed_by_another_key() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256")
    assert refused(rs_service(), token).code == "token_invalid"


def test_rs256_refuses_hs256_signed_with_the_public_key() -> None:
    # The key-confusion attack: the public key is public, so an HS256 MAC keyed with
    # its PEM text must never verify.
    _, public = rsa_keys()
    token = hand_made({"alg": "HS256", "typ": "JWT"}, claims(), public.encode())
    error = refused(rs_service(), token)
    assert error.code == "token_invalid"


def test_rs256_refuses_alg_none() -> None:
    token = hand_made({"alg": "none"}, claims(), None)
    assert refused(rs_service(), token).code == "token_invalid"


def test_hs256_service_refuses_rs256_token() -> None:
    private, _ = rsa_keys()
    token = jwt.encode(claims(), private, algorithm="RS256")
    assert refused(hs_service(), token).code == "token_invalid"


def test_rs256_expired_is_token_expired() -> None:
    service = rs_service()
    token = service.issue("alice", now=time.time() - 100, ttl_s=10)
    assert refused(service, token).code == "token_expired"


# --- AuthSettings.from_env -------------------------------------------------------------


def test_production_without_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="WARREN_JWT_SECRET"):
        AuthSettings.from_env({}, development=False)


def test_production_with_blank_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        AuthSettings.from_env({"WARREN_JWT_SECRET": "   "}, development=False)


def test_development_without_secret_uses_the_dev_secret() -> None:
    settings = AuthSettings.from_env({}, development=True)
    assert settings == AuthSettings(HS256, DEV_SECRET, DEV_SECRET, 3600)


def test_the_admin_role_is_read_once_for_every_service() -> None:
    assert AuthSettings.from_env({}, development=True).admin_role == "admin"
    env = {"WARREN_ADMIN_ROLE": "ops", "WARREN_JWT_SECRET": SECRET}
    assert AuthSettings.from_env(env, development=False).admin_role == "ops"
    assert admin_role(env) == "ops"
    for bad in ("two words", "x" * 65, "a.b"):
        with pytest.raises(ConfigError, match="WARREN_ADMIN_ROLE"):
            AuthSettings.from_env({"WARREN_ADMIN_ROLE": bad}, development=True)


def test_secret_from_env() -> None:
    settings = AuthSettings.from_env({"WARREN_JWT_SECRET": SECRET}, development=False)
    assert settings.algorithm == HS256
    assert settings.verify_key == SECRET
    assert settings.signing_key == SECRET


def test_short_secret_is_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        AuthSettings.from_env({"WARREN_JWT_SECRET": "x" * (MIN_SECRET_BYTES - 1)}, development=True)


def test_secret_length_counts_bytes_not_characters() -> None:
    # 16 two-byte characters: 32 bytes, accepted.
    settings = AuthSettings.from_env({"WARREN_JWT_SECRET": "é" * 16}, development=False)
    assert settings.verify_key == "é" * 16


def test_ttl_from_env() -> None:
    env = {"WARREN_JWT_SECRET": SECRET, "WARREN_JWT_TTL_S": "60"}
    assert AuthSettings.from_env(env, development=False).token_ttl_s == 60


@pytest.mark.parametrize("ttl", ["0", "-5", "abc", "1.5"])
def test_bad_ttl_is_rejected(ttl: str) -> None:
    with pytest.raises(ConfigError, match="WARREN_JWT_TTL_S"):
        AuthSettings.from_env(
            {"WARREN_JWT_SECRET": SECRET, "WARREN_JWT_TTL_S": ttl}, development=True
        )


def test_algorithm_is_case_insensitive() -> None:
    env = {"WARREN_JWT_ALGORITHM": "hs256", "WARREN_JWT_SECRET": SECRET}
    assert AuthSettings.from_env(env, development=False).algorithm == HS256


@pytest.mark.parametrize("algorithm", ["none", "HS512", "ES256", "RS512"])
def test_unknown_algorithm_is_rejected(algorithm: str) -> None:
    env = {"WARREN_JWT_ALGORITHM": algorithm, "WARREN_JWT_SECRET": SECRET}
    with pytest.raises(ConfigError, match="WARREN_JWT_ALGORITHM"):
        AuthSettings.from_env(env, development=True)


def test_rs256_without_public_key_is_rejected() -> None:
    private, _ = rsa_keys()
    env = {"WARREN_JWT_ALGORITHM": "RS256", "WARREN_JWT_PRIVATE_KEY": private}
    with pytest.raises(ConfigError, match="WARREN_JWT_PUBLIC_KEY"):
        AuthSettings.from_env(env, development=True)


def test_rs256_with_public_key_only_verifies_but_cannot_sign() -> None:
    _, public = rsa_keys()
    env = {"WARREN_JWT_ALGORITHM": "RS256", "WARREN_JWT_PUBLIC_KEY": public}
    settings = AuthSettings.from_env(env, development=False)
    assert settings.algorithm == RS256
    assert settings.verify_key == public.strip()
    assert settings.signing_key is None


def test_rs256_ignores_the_hs_secret() -> None:
    _, public = rsa_keys()
    env = {
        "WARREN_JWT_ALGORITHM": "RS256",
        "WARREN_JWT_PUBLIC_KEY": public,
        "WARREN_JWT_SECRET": SECRET,
    }
    assert AuthSettings.from_env(env, development=False).verify_key == public.strip()


def test_rs256_with_a_malformed_public_key_is_rejected_at_start_up() -> None:
    # ConfigError's contract: "raised at start-up, never later". A public key that is
    # not a key makes every verify() raise jwt.InvalidKeyError (not TokenError).
    env = {"WARREN_JWT_ALGORITHM": "RS256", "WARREN_JWT_PUBLIC_KEY": "not a pem key"}
    with pytest.raises(ConfigError):
        AuthSettings.from_env(env, development=False)


def test_secret_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    settings = AuthSettings.from_env({"WARREN_JWT_SECRET_FILE": str(path)}, development=False)
    assert settings.verify_key == SECRET


def test_secret_file_with_trailing_newline_gives_the_same_key_as_env(tmp_path: Path) -> None:
    # `echo $SECRET > file` and most secret stores leave a trailing newline; the env
    # value is stripped, so one process reading the env and another reading the file
    # must agree on the key.
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    from_file = AuthSettings.from_env({"WARREN_JWT_SECRET_FILE": str(path)}, development=False)
    from_env = AuthSettings.from_env({"WARREN_JWT_SECRET": SECRET}, development=False)
    assert from_file.verify_key == from_env.verify_key


def test_env_value_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(OTHER_SECRET)
    env = {"WARREN_JWT_SECRET": SECRET, "WARREN_JWT_SECRET_FILE": str(path)}
    assert AuthSettings.from_env(env, development=False).verify_key == SECRET


def test_unreadable_secret_file_is_a_config_error(tmp_path: Path) -> None:
    env = {"WARREN_JWT_SECRET_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="WARREN_JWT_SECRET_FILE"):
        AuthSettings.from_env(env, development=True)


def test_short_secret_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("short")
    with pytest.raises(ConfigError, match="at least"):
        AuthSettings.from_env({"WARREN_JWT_SECRET_FILE": str(path)}, development=True)


def test_rs256_key_files_are_read(tmp_path: Path) -> None:
    private, public = rsa_keys()
    (tmp_path / "pub.pem").write_text(public)
    (tmp_path / "priv.pem").write_text(private)
    env = {
        "WARREN_JWT_ALGORITHM": "RS256",
        "WARREN_JWT_PUBLIC_KEY_FILE": str(tmp_path / "pub.pem"),
        "WARREN_JWT_PRIVATE_KEY_FILE": str(tmp_path / "priv.pem"),
    }
    settings = AuthSettings.from_env(env, development=False)
    assert settings.verify_key == public.strip()
    assert settings.signing_key == private.strip()
    service = TokenService(settings)
    assert service.verify(service.issue("alice")).user_id == "alice"


def test_settings_from_env_issue_and_verify_interoperate() -> None:
    env = {"WARREN_JWT_SECRET": SECRET}
    issuer = TokenService(AuthSettings.from_env(env, development=False))
    verifier = TokenService(AuthSettings.from_env(env, development=False))
    assert verifier.verify(issuer.issue("alice")).user_id == "alice"
