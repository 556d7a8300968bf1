"""The edge's settings, read from the environment once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.auth import AuthSettings
from shared.config import (
    CommonSettings,
    ConfigError,
    Env,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
)
from shared.exports.settings import DEFAULT_EXPORTS_DIR, Limits, exports_dir
from services.ws_edge.client_address import TrustedProxies
from services.ws_edge.command_gate import CommandRoles
from services.ws_edge.frame_rate import FrameRate
from services.ws_edge.login_limits import LoginLimits
from services.ws_edge.policy import SendPolicy
from services.ws_edge.publishing import PublishSettings


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    common: CommonSettings
    auth: AuthSettings
    policy: SendPolicy
    host: str
    port: int
    allowed_origins: tuple[str, ...]
    # seconds between heartbeats (unsolicited pongs) to each socket; 0: none, and no
    # user timeout (services/ws_edge/keepalive.py)
    ping_interval_s: float
    # how long data sent to a socket may wait for the peer's acknowledgement before the
    # kernel drops the connection (TCP_USER_TIMEOUT); 0: the interval
    ping_timeout_s: float
    max_inbound_frame_bytes: int
    max_outbound_buffer_bytes: int
    invalid_frame_limit: int
    invalid_frame_window_s: float
    bind_timeout_s: float
    bind_channels: int
    handshake_timeout_s: float
    listen_backlog: int
    max_opening: int
    shutdown_deadline_s: float
    prefetch: int
    login_threads: int
    exports_dir: Path = Path(DEFAULT_EXPORTS_DIR)  # shared with excel_worker (WARREN_EXPORTS_DIR)
    export_limits: Limits = Limits.from_env({})
    # cat_relay replicas whose /readyz/cat the console's Cat status reads (warren up sets it)
    relay_urls: tuple[str, ...] = ()
    login_limits: LoginLimits = LoginLimits.from_env({})
    # reverse proxies whose X-Forwarded-For / X-Real-IP name the client (none by default)
    trusted_proxies: TrustedProxies = TrustedProxies()
    frame_rate: FrameRate = FrameRate.from_env({})
    # whether a token's user must still exist in the users table (one lookup per
    # connect and per /api request); off by default only with WARREN_ENV=development
    check_users: bool = True
    # sockets one user may hold open on this edge at once; 0: no limit
    max_sockets_per_user: int = 100
    # who may send which declared command type, over the declaring service's word
    command_roles: CommandRoles = CommandRoles()
    # how long start waits for the running services to answer the catalogue query
    catalogue_wait_s: float = 2.0
    # POST /api/publish and /api/publish/batch (docs/protocol.md 15)
    publish: PublishSettings = PublishSettings()

    @classmethod
    def from_env(cls, env: Env) -> EdgeSettings:
        common = CommonSettings.from_env(env, "edge")
        ping_interval = env_float(env, "WARREN_EDGE_PING_INTERVAL_S", 25.0)
        return cls(
            common=common,
            auth=AuthSettings.from_env(env, development=common.development),
            policy=SendPolicy.from_env(env),
            host=env_str(env, "WARREN_EDGE_HOST", "0.0.0.0"),
            port=env_int(env, "WARREN_EDGE_PORT", 8000),
            allowed_origins=env_list(env, "WARREN_EDGE_ALLOWED_ORIGINS"),
            ping_interval_s=ping_interval,
            ping_timeout_s=env_float(env, "WARREN_EDGE_PING_TIMEOUT_S", ping_interval),
            max_inbound_frame_bytes=env_int(env, "WARREN_EDGE_MAX_FRAME_BYTES", 65536, minimum=1024),
            max_outbound_buffer_bytes=env_int(
                env, "WARREN_EDGE_MAX_OUTBOUND_BYTES", 1 << 20, minimum=65536
            ),
            invalid_frame_limit=env_int(env, "WARREN_EDGE_INVALID_FRAME_LIMIT", 10, minimum=1),
            invalid_frame_window_s=env_float(env, "WARREN_EDGE_INVALID_FRAME_WINDOW_S", 60.0),
            bind_timeout_s=env_float(env, "WARREN_EDGE_BIND_TIMEOUT_S", 10.0, minimum=0.1),
            bind_channels=env_int(env, "WARREN_EDGE_BIND_CHANNELS", 4, minimum=1),
            handshake_timeout_s=env_float(env, "WARREN_EDGE_HANDSHAKE_TIMEOUT_S", 10.0, minimum=0.1),
            listen_backlog=env_int(env, "WARREN_EDGE_LISTEN_BACKLOG", 1024, minimum=1),
            max_opening=env_int(env, "WARREN_EDGE_MAX_OPENING", 200, minimum=1),
            shutdown_deadline_s=env_float(env, "WARREN_EDGE_SHUTDOWN_DEADLINE_S", 10.0),
            prefetch=env_int(env, "WARREN_EDGE_PREFETCH", 512, minimum=1),
            login_threads=env_int(env, "WARREN_EDGE_LOGIN_THREADS", 4, minimum=1),
            exports_dir=exports_dir(env),
            export_limits=Limits.from_env(env),
            relay_urls=tuple(u.rstrip("/") for u in env_list(env, "WARREN_EDGE_RELAY_URLS")),
            login_limits=LoginLimits.from_env(env),
            trusted_proxies=TrustedProxies.from_env(env),
            frame_rate=FrameRate.from_env(env),
            check_users=env_bool(env, "WARREN_EDGE_CHECK_USERS", not common.development),
            max_sockets_per_user=env_int(env, "WARREN_EDGE_MAX_SOCKETS_PER_USER", 100),
            command_roles=CommandRoles.from_env(env),
            catalogue_wait_s=env_float(env, "WARREN_EDGE_CATALOGUE_WAIT_S", 2.0),
            publish=PublishSettings.from_env(env),
        )

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"WARREN_EDGE_PORT must be a TCP port (0: any free one), got {self.port}")
