"""The runner's settings, read from the environment once at start-up (``WARREN_RUNNER_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.auth import admin_role
from shared.config import CommonSettings, ConfigError, Env, env_float, env_int, env_str
from shared.service import HttpSettings

DEFAULT_PORT = 8200
DEFAULT_CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    common: CommonSettings
    http: HttpSettings
    max_concurrent: int  # runs at once on this replica (the runs queue's prefetch)
    max_per_user: int  # queued or running runs per user, across replicas
    max_queue_s: float  # longest wait of an accepted run for a free slot
    max_wall_s: float
    max_line_chars: int
    max_output_bytes: int
    max_args_bytes: int
    batch_lines: int
    batch_bytes: int
    batch_interval_s: float
    stop_grace_s: float  # cooperative stop -> SIGTERM
    kill_grace_s: float  # SIGTERM -> SIGKILL
    heartbeat_s: float
    heartbeat_timeout_s: float
    tail_lines: int
    command_prefetch: int  # run.start and run.stop commands handled at once
    db_threads: int
    consumer_timeout_s: float  # the broker's consumer_timeout: a run must end before it
    http_job_url: str
    admin_role: str  # users with this role (in the users table) may stop anyone's run
    owner_probe_s: float  # wait before a second look at a replica whose control queue is gone
    child_path: str  # PATH of job processes; nothing else of the runner's env is passed on

    @classmethod
    def from_env(cls, env: Env) -> RunnerSettings:
        p = "WARREN_RUNNER_"
        return cls(
            common=CommonSettings.from_env(env, "runner"),
            http=HttpSettings.from_env(env, "RUNNER", DEFAULT_PORT),
            max_concurrent=env_int(env, p + "MAX_CONCURRENT", 4, minimum=1),
            max_per_user=env_int(env, p + "MAX_PER_USER", 2, minimum=1),
            max_queue_s=env_float(env, p + "MAX_QUEUE_S", 300.0, minimum=0.1),
            max_wall_s=env_float(env, p + "MAX_WALL_S", 600.0, minimum=0.1),
            max_line_chars=env_int(env, p + "MAX_LINE_CHARS", 4096, minimum=16),
            max_output_bytes=env_int(env, p + "MAX_OUTPUT_BYTES", 16 << 20, minimum=1024),
            max_args_bytes=env_int(env, p + "MAX_ARGS_BYTES", 8192, minimum=64),
            batch_lines=env_int(env, p + "BATCH_LINES", 500, minimum=1),
            batch_bytes=env_int(env, p + "BATCH_BYTES", 64 << 10, minimum=1024),
            batch_interval_s=env_float(env, p + "BATCH_INTERVAL_S", 0.05, minimum=0.001),
            stop_grace_s=env_float(env, p + "STOP_GRACE_S", 0.3),
            kill_grace_s=env_float(env, p + "KILL_GRACE_S", 0.5),
            heartbeat_s=env_float(env, p + "HEARTBEAT_S", 5.0, minimum=0.05),
            heartbeat_timeout_s=env_float(env, p + "HEARTBEAT_TIMEOUT_S", 30.0, minimum=0.1),
            tail_lines=env_int(env, p + "TAIL_LINES", 100, minimum=0),
            command_prefetch=env_int(env, p + "COMMAND_PREFETCH", 16, minimum=1),
            db_threads=env_int(env, p + "DB_THREADS", 4, minimum=1),
            consumer_timeout_s=env_float(env, p + "CONSUMER_TIMEOUT_S", 1800.0, minimum=1),
            http_job_url=env_str(env, p + "HTTP_JOB_URL", ""),
            admin_role=admin_role(env),
            owner_probe_s=env_float(env, p + "OWNER_PROBE_S", 3.0),
            child_path=env_str(env, "PATH", DEFAULT_CHILD_PATH),
        )

    def __post_init__(self) -> None:
        if self.heartbeat_timeout_s < 2 * self.heartbeat_s:
            raise ConfigError(
                "WARREN_RUNNER_HEARTBEAT_TIMEOUT_S must be at least twice WARREN_RUNNER_HEARTBEAT_S"
            )
        # A run's start command stays unacknowledged until the run ends; RabbitMQ closes
        # the channel of a consumer holding a delivery longer than its consumer_timeout.
        longest = self.max_wall_s + self.stop_grace_s + self.kill_grace_s + 60
        if longest >= self.consumer_timeout_s:
            raise ConfigError(
                f"WARREN_RUNNER_MAX_WALL_S plus the stop graces and a minute ({longest:g} s) must "
                f"stay below the broker's consumer_timeout (WARREN_RUNNER_CONSUMER_TIMEOUT_S, "
                f"{self.consumer_timeout_s:g} s)"
            )
        if self.http_job_url and not self.http_job_url.startswith(("http://", "https://")):
            raise ConfigError("WARREN_RUNNER_HTTP_JOB_URL must be an http:// or https:// URL")
