"""The worker's settings, and what is recorded of a refused request.

The requests' rules are tested with the reports (tests/unit/test_excel_reports.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import ConfigError
from shared.exports.requests import as_refused
from services.excel_worker.settings import ExcelSettings


def test_settings_refuse_the_test_delay_outside_development() -> None:
    with pytest.raises(ConfigError):
        ExcelSettings.from_env({"WARREN_EXCEL_TEST_ROW_DELAY_S": "0.1"})
    settings = ExcelSettings.from_env({"WARREN_ENV": "development", "WARREN_EXCEL_MAX_ATTEMPTS": "4",
                                       "WARREN_EXPORTS_DIR": "/data/exports"})
    assert settings.max_attempts == 4 and str(settings.exports_dir) == "/data/exports"
    with pytest.raises(ConfigError):
        ExcelSettings.from_env({"WARREN_EXCEL_MAX_ATTEMPTS": "0"})


@pytest.mark.parametrize(
    ("data", "recorded"),
    [
        ({"report": "pivot", "params": {"x": 1}}, ("pivot", {"x": 1})),
        ({"report": "p" * 40}, ("p" * 32, {})),
        ({"report": 7, "params": []}, ("?", {"omitted": True})),
        ({"report": "table", "params": {"rows": ["x" * 1000] * 1100}}, ("table", {"omitted": True})),
        ("not an object", ("?", {})),
    ],
)
def test_refused_requests_are_recorded_as_sent_within_bounds(
    data: Any, recorded: tuple[str, dict[str, Any]]
) -> None:
    assert as_refused(data) == recorded
