"""The runner's settings, read from the environment once at start-up (``WARREN_RUNNER_*``)."""

from __future__ import annotations

import logging
import os
import stat
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.auth import admin_role
from shared.config import CommonSettings, ConfigError, Env, env_float, env_int, env_str
from shared.service import HttpSettings
from services.runner.process import ChildUser
from services.runner.registry import JOBS

log = logging.getLogger(__name__)

DEFAULT_PORT = 8200
DEFAULT_CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"
DEV_FILES_DIR = "var/files"
ROOT_CHILD_USER = "nobody"  # jobs of a runner running as root run as this user by default
CODE_ROOT = Path(__file__).resolve().parents[2]


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
    files_dir: Path | None  # what `path` arguments may name; None: jobs taking one are off
    child_user: ChildUser | None  # who job processes run as; None: the runner's own user
    job_references: tuple[str, ...]  # module:attribute of jobs besides the entry points
    jobs_enabled: frozenset[str] | None  # the only jobs offered; None: every job found

    @classmethod
    def from_env(cls, env: Env) -> RunnerSettings:
        p = "WARREN_RUNNER_"
        common = CommonSettings.from_env(env, "runner")
        return cls(
            common=common,
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
            files_dir=_files_dir(env, development=common.development),
            child_user=_child_user(env),
            job_references=JOBS.references(env),
            jobs_enabled=JOBS.enabled(env),
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
        user = self.child_user
        if user is not None and self.files_dir is not None and self.files_dir.exists():
            if _unreadable(user, [self.files_dir]) is not None:
                raise ConfigError(
                    f"WARREN_RUNNER_FILES_DIR ({self.files_dir}) must be readable by "
                    f"WARREN_RUNNER_CHILD_USER ({user.name}), who runs the jobs"
                )


def _files_dir(env: Env, *, development: bool) -> Path | None:
    raw = env_str(env, "WARREN_RUNNER_FILES_DIR", DEV_FILES_DIR if development else "")
    # Absolute: a job process works in a directory of its own.
    return Path(raw).resolve() if raw else None


def _child_user(env: Env) -> ChildUser | None:
    """``WARREN_RUNNER_CHILD_USER``; unset means ``nobody`` for a root runner, else no switch."""
    name = "WARREN_RUNNER_CHILD_USER"
    raw = env_str(env, name, "")
    euid = os.geteuid()
    if not raw and euid != 0:
        return None
    try:
        user = ChildUser.lookup(raw or ROOT_CHILD_USER)
    except KeyError as exc:
        if not raw:
            log.warning("no user %r: jobs run as root; set %s", ROOT_CHILD_USER, name)
            return None
        raise ConfigError(f"{name}={raw!r} is not a user of this system") from exc
    if user.uid == euid:
        return None
    if euid != 0:
        raise ConfigError(f"{name}={raw!r} needs the runner to run as root (or as that user)")
    blocked = _unreadable(user, _code_paths())
    if blocked is not None:
        message = (f"{user.name} cannot reach {blocked}, which job processes need to start "
                   f"Python and the jobs' code")
        if raw:
            raise ConfigError(f"{name}={raw!r}: {message}")
        # The development set-up may keep its interpreter somewhere private (~root/.pyenv).
        log.warning("%s; jobs run as root: set %s to a user that can", message, name)
        return None
    return user


def _code_paths() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(os.path.realpath(sys.executable)), Path(paths["stdlib"]),
            Path(paths["purelib"]), Path(paths["platlib"]), CODE_ROOT]


def _unreadable(user: ChildUser, paths: Iterable[Path]) -> Path | None:
    """The first of ``paths``, or a directory above one, that ``user`` may not read.

    Judged from the mode bits (owner, group, others), as the kernel does for a process
    with that user's id and group and no supplementary groups.
    """
    for path in paths:
        for node in (*reversed(path.parents), path):
            try:
                info = node.stat()
            except OSError:
                return node
            shift = 6 if info.st_uid == user.uid else 3 if info.st_gid == user.gid else 0
            need = stat.S_IXOTH if node != path else stat.S_IROTH
            if stat.S_ISDIR(info.st_mode):
                need |= stat.S_IXOTH
            if info.st_mode & (need << shift) != need << shift:
                return node
    return None
