"""Checking export requests: every refusal has a stable code and says what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import ConfigError
from shared.exports.requests import InvalidRequest, ReportKind, as_refused, parse_request
from shared.exports.settings import Limits
from services.excel_worker.settings import ExcelSettings

LIMITS = Limits(max_sample_rows=1000, max_table_rows=3, max_table_columns=2, max_activity_rows=50)


def test_sample_defaults_and_bounds() -> None:
    request = parse_request({"report": "sample"}, LIMITS)
    assert request.report is ReportKind.SAMPLE and request.params == {"rows": 1000, "title": None}
    assert parse_request({"report": "sample", "params": {"rows": 7, "title": "t"}}, LIMITS).params == {
        "rows": 7, "title": "t"}


def test_table_is_normalised() -> None:
    request = parse_request({"report": "table", "params": {
        "columns": [{"name": "a"}, {"name": "b", "type": "date"}],
        "rows": [["x", "2024-01-02"], [None, None]],
    }}, LIMITS)
    assert request.params["columns"] == [{"name": "a", "type": "string"}, {"name": "b", "type": "date"}]
    assert request.params["rows"] == [["x", "2024-01-02"], [None, None]]


def test_activity_defaults() -> None:
    params = parse_request({"report": "activity"}, LIMITS).params
    assert params == {"status": [], "sources": ["exports", "runs"], "since": None, "until": None,
                      "limit": 50, "title": None}


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        ("sample", "invalid_params", "data must be an object"),
        ({"report": 3}, "unknown_report", "report must be one of"),
        ({"report": "sample", "params": []}, "invalid_params", "params must be an object"),
        ({"report": "sample", "params": {"rows": 1001}}, "too_many_rows", "at most 1000"),
        ({"report": "sample", "params": {"rows": 0}}, "invalid_params", "at least 1"),
        ({"report": "sample", "params": {"rows": True}}, "invalid_params", "integer"),
        ({"report": "sample", "params": {"rows": 1.5}}, "invalid_params", "integer"),
        ({"report": "sample", "params": {"title": ""}}, "invalid_params", "title"),
        ({"report": "table", "params": {"columns": [], "rows": []}}, "invalid_params", "non-empty"),
        ({"report": "table", "params": {"columns": [{"name": "a"}] * 3, "rows": []}},
         "too_many_columns", "at most 2"),
        ({"report": "table", "params": {"columns": [{"name": "a"}], "rows": [["x"]] * 4}},
         "too_many_rows", "at most 3"),
        ({"report": "table", "params": {"columns": [{"name": "a"}], "rows": [["x", "y"]]}},
         "invalid_params", "rows[0] has 2 values"),
        ({"report": "table", "params": {"columns": [{"name": "a"}], "rows": "x"}},
         "invalid_params", "list of lists"),
        ({"report": "table", "params": {"columns": [{"name": "a", "type": "integer"}],
                                        "rows": [[True]]}}, "invalid_params", "rows[0][0]: expected integer"),
        ({"report": "table", "params": {"columns": [{"name": "a", "type": "number"}],
                                        "rows": [[float("nan")]]}}, "invalid_params", "expected number"),
        ({"report": "table", "params": {"columns": [{"name": "a", "type": "datetime"}],
                                        "rows": [["soon"]]}}, "invalid_params", "expected datetime"),
        ({"report": "table", "params": {"columns": [{"name": "a", "type": "boolean"}],
                                        "rows": [[1]]}}, "invalid_params", "expected boolean"),
        ({"report": "table", "params": {"columns": [{"name": "a", "type": "string"}],
                                        "rows": [["x" * 40000]]}}, "invalid_params", "expected string"),
        ({"report": "table", "params": {"columns": [{"type": "string"}], "rows": []}},
         "invalid_params", "columns[0].name"),
        ({"report": "activity", "params": {"since": "monday"}}, "invalid_params", "since"),
        ({"report": "activity", "params": {"sources": ["mail"]}}, "invalid_params", "sources"),
        ({"report": "activity", "params": {"limit": 51}}, "too_many_rows", "at most 50"),
    ],
)
def test_refusals(data: Any, code: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(data, LIMITS)
    assert caught.value.code == code
    assert fragment in caught.value.message


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
