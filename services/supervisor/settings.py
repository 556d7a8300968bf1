"""What ``warren up`` runs and where, read from the environment and the command line once."""

from __future__ import annotations

from collections.abc import Mapping
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

    def placement(self, kind: ServiceKind) -> Placement:
        return next(p for p in self.placements if p.kind is kind)

    @classmethod
    def from_env(cls, env: Env, replicas: Mapping[str, int]) -> UpSettings:
        """``replicas`` maps a kind's name to its count (the ``--edges`` … options)."""
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
        )
