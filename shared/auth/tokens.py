"""JWT issuing and verification with a pinned algorithm.

HS256 uses ``WARREN_JWT_SECRET``; RS256 verifies with ``WARREN_JWT_PUBLIC_KEY`` and,
where the process issues tokens, signs with ``WARREN_JWT_PRIVATE_KEY``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Final

import jwt
from jwt.algorithms import RSAAlgorithm

from shared.config import ConfigError, Env, env_file_or_value, env_int, env_str
from shared.messaging.names import valid_name

HS256: Final = "HS256"
RS256: Final = "RS256"
DEV_SECRET: Final = "warren-development-secret-do-not-use-in-production"
MIN_SECRET_BYTES: Final = 32
DEFAULT_ADMIN_ROLE: Final = "admin"
REQUIRED_CLAIMS: Final = ("exp", "iat", "sub")
NUMERIC_DATE_CLAIMS: Final = ("exp", "iat", "nbf")


class TokenError(Exception):
    """A token that must be refused; ``code`` is the stable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class AuthSettings:
    algorithm: str
    verify_key: str
    signing_key: str | None
    token_ttl_s: int
    # the role that may see and act on every user's runs, exports and chats
    admin_role: str = DEFAULT_ADMIN_ROLE

    @classmethod
    def from_env(cls, env: Env, *, development: bool) -> AuthSettings:
        algorithm = env_str(env, "WARREN_JWT_ALGORITHM", HS256).upper()
        ttl = env_int(env, "WARREN_JWT_TTL_S", 3600, minimum=1)
        admin = admin_role(env)
        if algorithm == HS256:
            secret = env_file_or_value(env, "WARREN_JWT_SECRET")
            if secret is None:
                if not development:
                    raise ConfigError(
                        "WARREN_JWT_SECRET is required (the development default is used "
                        "only with WARREN_ENV=development)"
                    )
                secret = DEV_SECRET
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"WARREN_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
            return cls(HS256, secret, secret, ttl, admin)
        if algorithm == RS256:
            public = env_file_or_value(env, "WARREN_JWT_PUBLIC_KEY")
            if public is None:
                raise ConfigError("WARREN_JWT_ALGORITHM=RS256 needs WARREN_JWT_PUBLIC_KEY")
            private = env_file_or_value(env, "WARREN_JWT_PRIVATE_KEY")
            _check_rsa_key("WARREN_JWT_PUBLIC_KEY", public)
            if private is not None:
                _check_rsa_key("WARREN_JWT_PRIVATE_KEY", private)
            return cls(RS256, public, private, ttl, admin)
        raise ConfigError(f"WARREN_JWT_ALGORITHM must be HS256 or RS256, got {algorithm!r}")


def admin_role(env: Env) -> str:
    """``WARREN_ADMIN_ROLE``: one role name for every service (default ``admin``)."""
    role = env_str(env, "WARREN_ADMIN_ROLE", DEFAULT_ADMIN_ROLE)
    if not valid_name(role):
        raise ConfigError(f"WARREN_ADMIN_ROLE must match [A-Za-z0-9_-]{{1,64}}, got {role!r}")
    return role


def _check_rsa_key(name: str, pem: str) -> None:
    try:
        RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(pem)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{name} is not a PEM-encoded RSA key: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    user_id: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    expires_at: float

    def has_role(self, role: str) -> bool:
        return role in self.roles


class TokenService:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings

    @property
    def can_issue(self) -> bool:
        return self._settings.signing_key is not None

    @property
    def ttl_s(self) -> int:
        return self._settings.token_ttl_s

    def issue(
        self,
        user_id: str,
        groups: tuple[str, ...] = (),
        roles: tuple[str, ...] = (),
        *,
        ttl_s: int | None = None,
        now: float | None = None,
    ) -> str:
        if self._settings.signing_key is None:
            raise ConfigError("this process has no key to sign tokens with")
        issued = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "sub": user_id,
            "groups": list(groups),
            "roles": list(roles),
            "iat": issued,
            "exp": issued + (ttl_s if ttl_s is not None else self._settings.token_ttl_s),
        }
        return jwt.encode(claims, self._settings.signing_key, algorithm=self._settings.algorithm)

    def verify(self, token: str) -> Identity:
        try:
            # PyJWT passes these claims through int(), which takes "1796..." and true.
            _check_numeric_dates(_claims_as_sent(token))
            claims = jwt.decode(
                token,
                self._settings.verify_key,
                algorithms=[self._settings.algorithm],
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token_expired", "the token has expired") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("token_invalid", f"the token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise TokenError("token_invalid", "the token's algorithm is not accepted") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("token_invalid", "the token's signature does not verify") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("token_invalid", f"the token is not valid: {exc}") from exc
        return _identity(claims)


def _claims_as_sent(token: str) -> dict[str, Any]:
    """The token's claims as its JSON has them, read without checking anything else:
    the second segment, base64url-decoded and parsed as PyJWT parses it (a second
    ``jwt.decode`` would validate every segment again, which costs more than the rest of
    a handshake's token check). A token this cannot read has no claims here; PyJWT's
    own decode then refuses it, with its own message."""
    try:
        segment = token.split(".", 2)[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (IndexError, ValueError, binascii.Error):  # JSON and UTF-8 errors are ValueErrors
        return {}
    return claims if isinstance(claims, dict) else {}


def _check_numeric_dates(claims: dict[str, Any]) -> None:
    for claim in NUMERIC_DATE_CLAIMS:
        if claim not in claims:
            continue
        value = claims[claim]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            raise TokenError(
                "token_invalid", f"the token's {claim!r} claim must be a NumericDate (a number)"
            )


def _identity(claims: dict[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not valid_name(sub):
        raise TokenError("token_invalid", "the token's sub is not a valid user id")
    groups = claims.get("groups", [])
    roles = claims.get("roles", [])
    if not isinstance(groups, list) or not all(valid_name(g) for g in groups):
        raise TokenError("token_invalid", "the token's groups must be a list of group names")
    if not isinstance(roles, list) or not all(valid_name(r) for r in roles):
        raise TokenError("token_invalid", "the token's roles must be a list of role names")
    return Identity(
        user_id=sub,
        groups=tuple(dict.fromkeys(groups)),
        roles=tuple(dict.fromkeys(roles)),
        expires_at=float(claims["exp"]),
    )
