"""What ``warren up`` runs and where, read from the environment and the command line once."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.config import (
    CommonSettings,
    ConfigError,
    Env,
    env_file_or_value,
    env_float,
    env_int,
    env_str,
)
from shared.messaging.names import valid_name

ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_CAT_URL: Final = "http://127.0.0.1:1865"
DEFAULT_HOST: Final = "127.0.0.1"  # a demo with the development JWT secret stays on loopback
MAX_REPLICAS: Final = 16


@dataclass(frozen=True, slots=True)
class ServiceKind:
    """One of Warren's four services, as the supervisor starts it."""

    name: str  # short name in log prefixes and instance ids
    module: str  # ``python -m <module>``
    prefix: str  # its settings are WARREN_<prefix>_HOST / _PORT
    default_port: int
    tier: int  # started in ascending tiers, stopped in descending ones


EXCEL: Final = ServiceKind("excel", "services.excel_worker", "EXCEL", 8300, tier=1)
RUNNER: Final = ServiceKind("runner", "services.runner", "RUNNER", 8200, tier=1)
RELAY: Final = ServiceKind("relay", "services.cat_relay", "RELAY", 8100, tier=1)
EDGE: Final = ServiceKind("edge", "services.ws_edge", "EDGE", 8000, tier=2)
KINDS: Final = (EXCEL, RUNNER, RELAY, EDGE)
CAT_TIER: Final = 0  # the local Cat, if any: first up, last down
# The user's own services (``--service``, ``warren.toml``): up with Warren's services and
# before the edges, so that an edge accepts their command types from its first client.
USER_SERVICE_TIER: Final = 1
USER_SERVICE_PREFIX: Final = "SERVICE"
DEFAULT_USER_SERVICE_PORT: Final = 8400
CONFIG_FILE: Final = "warren.toml"
_REFERENCE: Final = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
# Names the supervisor's own children have; a user's service takes none of them.
_RESERVED: Final = re.compile(r"(cat|up|(edge|relay|runner|excel)(-[0-9]+)?)")


@dataclass(frozen=True, slots=True)
class Placement:
    """How many replicas of a kind run, on which host, from which port upwards."""

    kind: ServiceKind
    replicas: int
    host: str
    base_port: int  # 0: any free ports

    @property
    def probe_host(self) -> str:
        """Where the supervisor reaches a replica listening on ``host``."""
        return "127.0.0.1" if self.host in {"0.0.0.0", "", "::"} else self.host


@dataclass(frozen=True, slots=True)
class UserService:
    """One of the user's own services: ``warren serve <reference>`` under ``name``."""

    name: str
    reference: str  # ``pkg.module:attribute`` of a ``warren.service.Service``
    placement: Placement


def declared_services(flags: Sequence[str], config: Path | None) -> dict[str, str]:
    """The user's services, name -> reference: the ``[services]`` table of ``config``
    (``warren.toml``), then each ``--service NAME=pkg.module:attribute``, which replaces
    an entry of the file with its name. ``config`` None: none from a file."""
    declared: dict[str, str] = {}
    if config is not None:
        try:
            parsed = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{config} cannot be read: {exc}") from exc
        unknown = set(parsed) - {"services"}
        if unknown:
            raise ConfigError(f"{config}: unknown table {sorted(unknown)[0]!r}; "
                              f"only [services] is read")
        table = parsed.get("services", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{config}: services must be a table of NAME = \"pkg.module:service\"")
        for name, reference in table.items():
            if not isinstance(reference, str):
                raise ConfigError(f"{config}: services.{name} must be a string "
                                  f"\"pkg.module:service\", got {reference!r}")
            declared[name] = reference
    for flag in flags:
        name, sep, reference = flag.partition("=")
        if not sep:
            raise ConfigError(f"--service {flag!r} is not of the form NAME=pkg.module:service")
        declared[name.strip()] = reference.strip()
    for name, reference in declared.items():
        if not valid_name(name) or _RESERVED.fullmatch(name):
            raise ConfigError(f"service name {name!r} must match [A-Za-z0-9_-]{{1,64}} and "
                              f"not be one of warren up's own (edge, relay, runner, excel, cat)")
        if not _REFERENCE.fullmatch(reference):
            raise ConfigError(f"service {name}: {reference!r} is not of the form "
                              f"pkg.module:service")
    return declared


def config_file(given: str | None) -> Path | None:
    """The config file ``warren up`` reads: ``--config`` (which must exist), else
    ``warren.toml`` in the current directory if there is one."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"--config {given}: no such file")
        return path
    default = Path(CONFIG_FILE)
    return default if default.is_file() else None


@dataclass(frozen=True, slots=True)
class CatLookup:
    """Where ``warren up`` looks for a Cheshire Cat, and where it would start its own."""

    url: str
    configured: bool  # WARREN_CAT_URL was set (else the relay's default is tried)
    protocol_configured: bool
    venv: Path  # a Cat 2.x installed by scripts/test or by hand (docs/console.md)
    workdir: Path  # where a local Cat keeps its files


@dataclass(frozen=True, slots=True)
class UpSettings:
    common: CommonSettings
    placements: tuple[Placement, ...]  # in start order
    cat: CatLookup
    runner_http_job_url: str  # as configured; empty: the first edge is used
    relay_api_key_configured: bool  # else ``warren up`` makes a key for POST /send
    ready_timeout_s: float
    cat_ready_timeout_s: float
    stop_timeout_s: float
    services: tuple[UserService, ...] = ()  # the user's own, in the order declared

    def placement(self, kind: ServiceKind) -> Placement:
        return next(p for p in self.placements if p.kind is kind)

    @classmethod
    def from_env(
        cls, env: Env, replicas: Mapping[str, int], services: Mapping[str, str] | None = None
    ) -> UpSettings:
        """``replicas`` maps a kind's name to its count (the ``--edges`` … options);
        ``services`` the user's own services' names to their references
        (:func:`declared_services`). Each listens on ``WARREN_SERVICE_HOST``, on
        consecutive ports from ``WARREN_SERVICE_PORT`` (0: free ones)."""
        common = CommonSettings.from_env(env, "up")
        if not common.development:
            raise ConfigError("warren up is for development: set WARREN_ENV=development")
        placements = []
        for kind in KINDS:
            count = replicas.get(kind.name, 1)
            if not 1 <= count <= MAX_REPLICAS:
                raise ConfigError(f"{kind.name} replicas must be 1 to {MAX_REPLICAS}, got {count}")
            port_var = f"WARREN_{kind.prefix}_PORT"
            base = env_int(env, port_var, kind.default_port)
            if base and base + count - 1 > 65535:
                raise ConfigError(f"{port_var}={base} leaves no room for {count} replicas")
            host = env_str(env, f"WARREN_{kind.prefix}_HOST", DEFAULT_HOST)
            placements.append(Placement(kind, count, host, base))
        raw_cat_url = env.get("WARREN_CAT_URL", "").strip()
        user_services = []
        if services:
            port_var = f"WARREN_{USER_SERVICE_PREFIX}_PORT"
            base = env_int(env, port_var, DEFAULT_USER_SERVICE_PORT)
            if base and base + len(services) - 1 > 65535:
                raise ConfigError(f"{port_var}={base} leaves no room for {len(services)} services")
            host = env_str(env, f"WARREN_{USER_SERVICE_PREFIX}_HOST", DEFAULT_HOST)
            for index, (name, reference) in enumerate(services.items()):
                kind = ServiceKind(name, "warren.service", USER_SERVICE_PREFIX,
                                   DEFAULT_USER_SERVICE_PORT, tier=USER_SERVICE_TIER)
                placement = Placement(kind, 1, host, base + index if base else 0)
                user_services.append(UserService(name, reference, placement))
        return cls(
            common=common,
            placements=tuple(placements),
            cat=CatLookup(
                url=(raw_cat_url or DEFAULT_CAT_URL).rstrip("/"),
                configured=bool(raw_cat_url),
                protocol_configured=bool(env.get("WARREN_CAT_PROTOCOL", "").strip()),
                venv=Path(env_str(env, "WARREN_CAT_VENV", str(ROOT / ".venv-cat"))),
                workdir=Path(env_str(env, "WARREN_UP_CAT_DIR", "var/cat")),
            ),
            runner_http_job_url=env_str(env, "WARREN_RUNNER_HTTP_JOB_URL", ""),
            relay_api_key_configured=env_file_or_value(env, "WARREN_RELAY_API_KEY") is not None,
            ready_timeout_s=env_float(env, "WARREN_UP_READY_TIMEOUT_S", 60.0, minimum=1.0),
            cat_ready_timeout_s=env_float(env, "WARREN_UP_CAT_READY_TIMEOUT_S", 90.0, minimum=1.0),
            stop_timeout_s=env_float(env, "WARREN_UP_STOP_TIMEOUT_S", 20.0, minimum=0.1),
            services=tuple(user_services),
        )
