"""Typed readers for environment settings, and the settings every service shares.

Each service builds one frozen settings object from a mapping (``os.environ`` at the
entry point, a plain dict in tests). Nothing else in the code base reads the
environment.
"""

from __future__ import annotations

import math
import os
import socket
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

Env = Mapping[str, str]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DATABASE_URL = "sqlite:///var/warren.db"
DEFAULT_BROKER_OUTAGE_ALERT_S = 60.0
DEFAULT_CATALOGUE_TTL_S = 30.0
MIN_CATALOGUE_TTL_S = 0.5
DEVELOPMENT = "development"
PRODUCTION = "production"


class ConfigError(ValueError):
    """A setting is missing or malformed; raised at start-up, never later."""


def env_str(env: Env, name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value if value else default


def env_int(env: Env, name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(env: Env, name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_bool(env: Env, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean, got {raw!r}")


def env_list(env: Env, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def env_file_or_value(env: Env, name: str) -> str | None:
    """Read ``NAME`` or, failing that, the file named by ``NAME_FILE`` (container secrets)."""
    value = env.get(name, "").strip()
    if value:
        return value
    path = env.get(f"{name}_FILE", "").strip()
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    return None


def amqp_urls(value: str) -> tuple[str, ...]:
    """The broker addresses in ``WARREN_AMQP_URL``: one URL, or several separated by
    commas, the nodes of one cluster that a deployment without a load balancer lists
    (they are tried in turn: ``shared/messaging/failover.py``)."""
    urls = tuple(part.strip() for part in value.split(",") if part.strip())
    if not urls:
        raise ConfigError("WARREN_AMQP_URL names no broker")
    for url in urls:
        try:
            parsed = urllib.parse.urlsplit(url)
            parsed.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ConfigError(f"WARREN_AMQP_URL: {without_password(url)!r}: {exc}") from exc
        if parsed.scheme not in {"amqp", "amqps"} or not parsed.hostname:
            raise ConfigError(
                f"WARREN_AMQP_URL: {without_password(url)!r} is not an amqp:// or amqps:// URL"
            )
    return urls


def without_password(url: str) -> str:
    """A URL as logs and errors may show it."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def default_instance_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """The event stream every edge reads to recover clients and answer history requests
    (docs/protocol.md 17). Every process that publishes events reads the same values:
    which types are kept is decided where an event is published."""

    enabled: bool = True
    max_age_s: int = 600
    max_bytes: int = 256 * 1024 * 1024
    segment_bytes: int = 8 * 1024 * 1024
    not_kept: frozenset[str] = frozenset({"excel.progress"})
    # how far before a client's position a recovery reads: the clocks of publishers,
    # broker and edges must agree within it (docs/protocol.md 17.2)
    window_s: float = 2.0
    read_timeout_s: float = 30.0
    # how long a pass waits for writes the stream held back while it elected a leader
    # (docs/protocol.md 17.3, "A stream electing a leader")
    settle_s: float = 1.0

    def keeps(self, event_type: str) -> bool:
        return self.enabled and event_type not in self.not_kept

    @classmethod
    def from_env(cls, env: Env) -> HistorySettings:
        default = cls()
        return cls(
            enabled=env_bool(env, "WARREN_HISTORY", default.enabled),
            max_age_s=env_int(env, "WARREN_HISTORY_MAX_AGE_S", default.max_age_s, minimum=1),
            max_bytes=env_int(env, "WARREN_HISTORY_MAX_BYTES", default.max_bytes, minimum=1),
            segment_bytes=env_int(
                env, "WARREN_HISTORY_SEGMENT_BYTES", default.segment_bytes, minimum=1
            ),
            not_kept=frozenset(env_list(env, "WARREN_HISTORY_NOT_KEPT", tuple(default.not_kept))),
            window_s=env_float(env, "WARREN_HISTORY_WINDOW_S", default.window_s),
            read_timeout_s=env_float(
                env, "WARREN_HISTORY_READ_TIMEOUT_S", default.read_timeout_s, minimum=0.1
            ),
            settle_s=env_float(env, "WARREN_HISTORY_SETTLE_S", default.settle_s),
        )


@dataclass(frozen=True, slots=True)
class CommonSettings:
    """What every Warren process needs: where the broker and database are, and the mode."""

    environment: str
    # As configured: one broker URL, or several separated by commas (``amqp_urls``);
    # ``shared.messaging.broker.connect`` takes either.
    amqp_url: str
    database_url: str
    instance_id: str
    log_level: str
    # A broker outage lasting longer than this is logged at ERROR, once (it is a WARNING
    # before: restarts are expected).
    broker_outage_alert_s: float
    # How long an edge keeps offering what this process announced in the catalogue
    # without hearing from it again (it announces every third of it: shared/catalogue).
    catalogue_ttl_s: float = DEFAULT_CATALOGUE_TTL_S
    history: HistorySettings = HistorySettings()

    @property
    def development(self) -> bool:
        return self.environment == DEVELOPMENT

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        return amqp_urls(self.amqp_url)

    @classmethod
    def from_env(cls, env: Env, service: str) -> CommonSettings:
        environment = env_str(env, "WARREN_ENV", PRODUCTION)
        if environment not in {DEVELOPMENT, PRODUCTION}:
            raise ConfigError(f"WARREN_ENV must be {DEVELOPMENT!r} or {PRODUCTION!r}")
        amqp_url = env_str(env, "WARREN_AMQP_URL", DEFAULT_AMQP_URL)
        amqp_urls(amqp_url)  # malformed: refused at start-up
        return cls(
            environment=environment,
            amqp_url=amqp_url,
            database_url=env_str(env, "WARREN_DATABASE_URL", DEFAULT_DATABASE_URL),
            instance_id=env_str(env, "WARREN_INSTANCE_ID", default_instance_id(service)),
            log_level=env_str(env, "WARREN_LOG_LEVEL", "INFO").upper(),
            broker_outage_alert_s=env_float(
                env, "WARREN_BROKER_OUTAGE_ALERT_S", DEFAULT_BROKER_OUTAGE_ALERT_S
            ),
            catalogue_ttl_s=env_float(
                env, "WARREN_CATALOGUE_TTL_S", DEFAULT_CATALOGUE_TTL_S,
                minimum=MIN_CATALOGUE_TTL_S,
            ),
            history=HistorySettings.from_env(env),
        )
