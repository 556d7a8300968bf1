"""The shop's settings, read from the environment in one place.

The job, the report and the service each run in a process of their own (a runner's
child, an Excel worker's build, the service), so each reads them there, once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

DATABASE_VAR: Final = "SHOP_DATABASE"
EDGE_URL_VAR: Final = "SHOP_WARREN_URL"
KEY_VAR: Final = "SHOP_WARREN_KEY"
DEFAULT_EDGE_URL: Final = "http://127.0.0.1:8000"


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class ShopSettings:
    database: Path  # the shop's own SQLite file; Warren's database is Warren's

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ShopSettings:
        raw = env.get(DATABASE_VAR, "").strip()
        if not raw:
            raise SettingsError(f"{DATABASE_VAR} must name the shop's SQLite file")
        return cls(database=Path(raw).expanduser().resolve())


@dataclass(frozen=True, slots=True)
class NoticeSettings:
    """What the backend script needs to publish: the edge and a service key."""

    edge_url: str
    key: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NoticeSettings:
        key = env.get(KEY_VAR, "").strip()
        if not key:
            raise SettingsError(
                f"{KEY_VAR} must hold a service key (make one with: warren key add shop)"
            )
        return cls(edge_url=env.get(EDGE_URL_VAR, DEFAULT_EDGE_URL).rstrip("/"), key=key)


@cache
def shop_settings() -> ShopSettings:
    """This process's settings, read on first use."""
    return ShopSettings.from_env(os.environ)
