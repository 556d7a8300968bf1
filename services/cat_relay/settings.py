"""The relay's settings, read from the environment once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from shared.auth import AuthSettings
from shared.config import (
    CommonSettings,
    ConfigError,
    Env,
    env_bool,
    env_file_or_value,
    env_float,
    env_int,
    env_str,
)
from shared.service import HttpSettings

DEVELOPMENT_CAT_KEY = "meow"  # Cat 2.x's own default key; accepted only in development
SEND_MARGIN_S = 5.0


class CatProtocol(StrEnum):
    V1 = "v1"
    V2 = "v2"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class CatSettings:
    """How to reach the Cheshire Cat."""

    url: str
    protocol: CatProtocol
    api_key: str
    timeout_s: float
    connect_timeout_s: float
    idle_s: float
    agent: str

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @classmethod
    def from_env(cls, env: Env, *, development: bool) -> CatSettings:
        url = env_str(env, "WARREN_CAT_URL", "http://127.0.0.1:1865").rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"WARREN_CAT_URL must be an http(s) URL, got {url!r}")
        raw_protocol = env_str(env, "WARREN_CAT_PROTOCOL", CatProtocol.AUTO).lower()
        try:
            protocol = CatProtocol(raw_protocol)
        except ValueError as exc:
            raise ConfigError(f"WARREN_CAT_PROTOCOL must be v1, v2 or auto, got {raw_protocol!r}") from exc
        key = env_file_or_value(env, "WARREN_CAT_API_KEY")
        if key is None:
            # A v1 Cat without keys needs none; a v2 Cat always does, and its default
            # key is a known string, so only development may fall back to it.
            key = DEVELOPMENT_CAT_KEY if development else ""
        return cls(
            url=url,
            protocol=protocol,
            api_key=key,
            timeout_s=env_float(env, "WARREN_CAT_TIMEOUT_S", 60.0, minimum=0.1),
            connect_timeout_s=env_float(env, "WARREN_CAT_CONNECT_TIMEOUT_S", 5.0, minimum=0.1),
            idle_s=env_float(env, "WARREN_CAT_IDLE_S", 60.0, minimum=0.1),
            agent=env_str(env, "WARREN_CAT_AGENT", "default"),
        )


@dataclass(frozen=True, slots=True)
class RelaySettings:
    common: CommonSettings
    auth: AuthSettings
    http: HttpSettings
    cat: CatSettings
    service_api_key: str | None
    prefetch: int
    max_ask_chars: int
    history_turns: int
    token_flush_s: float
    token_flush_chars: int
    session_idle_s: float
    # whether a JWT's user must still be in the users table for POST /send (one lookup
    # per request); off by default only with WARREN_ENV=development, as on the edge
    check_users: bool = True

    @property
    def send_timeout_s(self) -> float:
        """How long ``POST /send`` waits: the Cat's own limits, plus time for the broker hops."""
        return self.cat.connect_timeout_s + self.cat.timeout_s + SEND_MARGIN_S

    @classmethod
    def from_env(cls, env: Env) -> RelaySettings:
        common = CommonSettings.from_env(env, "cat_relay")
        service_key = env_file_or_value(env, "WARREN_RELAY_API_KEY")
        if service_key is not None and len(service_key) < 24:
            raise ConfigError("WARREN_RELAY_API_KEY must be at least 24 characters")
        return cls(
            common=common,
            auth=AuthSettings.from_env(env, development=common.development),
            http=HttpSettings.from_env(env, "RELAY", 8100),
            cat=CatSettings.from_env(env, development=common.development),
            service_api_key=service_key,
            prefetch=env_int(env, "WARREN_RELAY_PREFETCH", 1024, minimum=1),
            max_ask_chars=env_int(env, "WARREN_RELAY_MAX_ASK_CHARS", 8000, minimum=1),
            history_turns=env_int(env, "WARREN_RELAY_HISTORY_TURNS", 20),
            token_flush_s=env_float(env, "WARREN_RELAY_TOKEN_FLUSH_S", 0.05),
            token_flush_chars=env_int(env, "WARREN_RELAY_TOKEN_FLUSH_CHARS", 2048, minimum=1),
            session_idle_s=env_float(env, "WARREN_RELAY_SESSION_IDLE_S", 60.0, minimum=0.1),
            check_users=env_bool(env, "WARREN_RELAY_CHECK_USERS", not common.development),
        )
