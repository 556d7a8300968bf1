"""The Excel worker's settings, read from the environment once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.config import CommonSettings, ConfigError, Env, env_float, env_int
from shared.exports.settings import Limits, exports_dir
from shared.service import HttpSettings
from services.excel_worker.registry import REPORTS

PREFIX = "EXCEL"
DEFAULT_PORT = 8300


@dataclass(frozen=True, slots=True)
class ExcelSettings:
    common: CommonSettings
    http: HttpSettings
    exports_dir: Path
    limits: Limits
    max_attempts: int
    retry_backoff_s: float
    retry_backoff_max_s: float
    progress_interval_s: float
    build_timeout_s: float
    retention_s: float
    sweep_interval_s: float
    db_threads: int
    row_delay_s: float  # test only: slows every row so "mid-task" windows are deterministic
    report_references: tuple[str, ...] = ()  # module:attribute of reports besides the entry points
    reports_enabled: frozenset[str] | None = None  # the only reports offered; None: all found

    @classmethod
    def from_env(cls, env: Env) -> ExcelSettings:
        common = CommonSettings.from_env(env, "excel_worker")
        row_delay = env_float(env, "WARREN_EXCEL_TEST_ROW_DELAY_S", 0.0)
        if row_delay and not common.development:
            raise ConfigError(
                "WARREN_EXCEL_TEST_ROW_DELAY_S is only allowed with WARREN_ENV=development"
            )
        return cls(
            common=common,
            http=HttpSettings.from_env(env, PREFIX, DEFAULT_PORT),
            exports_dir=exports_dir(env),
            limits=Limits.from_env(env),
            max_attempts=env_int(env, "WARREN_EXCEL_MAX_ATTEMPTS", 3, minimum=1),
            retry_backoff_s=env_float(env, "WARREN_EXCEL_RETRY_BACKOFF_S", 1.0),
            retry_backoff_max_s=env_float(env, "WARREN_EXCEL_RETRY_BACKOFF_MAX_S", 30.0),
            progress_interval_s=env_float(
                env, "WARREN_EXCEL_PROGRESS_INTERVAL_S", 0.25, minimum=0.05
            ),
            build_timeout_s=env_float(env, "WARREN_EXCEL_BUILD_TIMEOUT_S", 600.0, minimum=1.0),
            retention_s=env_float(env, "WARREN_EXCEL_RETENTION_S", 7 * 86400.0, minimum=1.0),
            sweep_interval_s=env_float(env, "WARREN_EXCEL_SWEEP_INTERVAL_S", 300.0, minimum=0.1),
            db_threads=env_int(env, "WARREN_EXCEL_DB_THREADS", 2, minimum=1),
            row_delay_s=row_delay,
            report_references=REPORTS.references(env),
            reports_enabled=REPORTS.enabled(env),
        )


