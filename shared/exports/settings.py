"""Export settings read by the worker and by the edge alike: limits and the storage directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.config import Env, env_int, env_str

EXPORTS_DIR_ENV: Final = "WARREN_EXPORTS_DIR"
DEFAULT_EXPORTS_DIR: Final = "var/exports"


def exports_dir(env: Env) -> Path:
    """The storage directory: the worker writes files there, the edge serves them."""
    return Path(env_str(env, EXPORTS_DIR_ENV, DEFAULT_EXPORTS_DIR))


@dataclass(frozen=True, slots=True)
class Limits:
    """What a request for a built-in report may ask for; checked before anything is built."""

    max_sample_rows: int
    max_table_rows: int
    max_table_columns: int
    max_activity_rows: int

    @classmethod
    def from_env(cls, env: Env) -> Limits:
        """``WARREN_EXCEL_MAX_*``: the edge reads them too, to answer 400 at once."""
        return cls(
            max_sample_rows=env_int(env, "WARREN_EXCEL_MAX_SAMPLE_ROWS", 1_000_000, minimum=1),
            max_table_rows=env_int(env, "WARREN_EXCEL_MAX_TABLE_ROWS", 10_000, minimum=1),
            max_table_columns=env_int(env, "WARREN_EXCEL_MAX_TABLE_COLUMNS", 50, minimum=1),
            max_activity_rows=env_int(env, "WARREN_EXCEL_MAX_ACTIVITY_ROWS", 100_000, minimum=1),
        )

    def maxima(self) -> dict[str, dict[str, int]]:
        """The limits as bounds on the built-in reports' parameters (``Report.with_limits``),
        by report name."""
        return {
            "sample": {"rows": self.max_sample_rows},
            "table": {"rows": self.max_table_rows, "columns": self.max_table_columns},
            "activity": {"limit": self.max_activity_rows},
        }
