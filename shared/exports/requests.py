"""What an ``excel.create`` request may ask for, checked before anything is built.

Pure functions over JSON, used by the edge (``POST /api/exports`` answers 400 at once)
and by the worker (commands from WebSocket clients arrive unchecked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Final

import orjson

from shared.exports.settings import Limits

MAX_TITLE_LENGTH: Final = 100
MAX_COLUMN_NAME_LENGTH: Final = 100
MAX_CELL_TEXT: Final = 32767  # Excel's limit for one cell
MAX_RECORDED_PARAMS: Final = 1 << 20
MAX_KIND_LENGTH: Final = 32  # export_tasks.kind


class ReportKind(StrEnum):
    ACTIVITY = "activity"
    TABLE = "table"
    SAMPLE = "sample"


class ColumnType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    DATE = "date"
    DATETIME = "datetime"
    BOOLEAN = "boolean"


class InvalidRequest(ValueError):
    """A request that can never be built; ``code`` is the stable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ExportRequest:
    report: ReportKind
    params: dict[str, Any]  # normalised, JSON-serialisable


def parse_request(data: object, limits: Limits) -> ExportRequest:
    """Check ``{"report": ..., "params": {...}}``; raise :class:`InvalidRequest` saying what
    is wrong."""
    if not isinstance(data, dict):
        raise InvalidRequest("invalid_params", "data must be an object")
    report = data.get("report")
    if not isinstance(report, str) or report not in ReportKind.__members__.values():
        kinds = ", ".join(k.value for k in ReportKind)
        raise InvalidRequest(
            "unknown_report", f"report must be one of {kinds}, got {str(report)[:64]!r}"
        )
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise InvalidRequest("invalid_params", "params must be an object")
    kind = ReportKind(report)
    if kind is ReportKind.SAMPLE:
        return ExportRequest(kind, _sample(params, limits))
    if kind is ReportKind.TABLE:
        return ExportRequest(kind, _table(params, limits))
    return ExportRequest(kind, _activity(params, limits))


def as_refused(data: object) -> tuple[str, dict[str, Any]]:
    """The report name and params to record for a refused request, as it was sent.

    Params that are not an object, or too large to keep, are replaced by a marker.
    """
    raw = data if isinstance(data, dict) else {}
    report = raw.get("report")
    kind = report[:MAX_KIND_LENGTH] if isinstance(report, str) else "?"
    params = raw.get("params", {})
    if not isinstance(params, dict) or len(orjson.dumps(params)) > MAX_RECORDED_PARAMS:
        return kind, {"omitted": True}
    return kind, params


def _only(params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        names = ", ".join(map(str, unknown))[:200]
        raise InvalidRequest("invalid_params", f"unknown params: {names}")


def _int(value: object, name: str, low: int, high: int, code: str = "invalid_params") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("invalid_params", f"{name} must be an integer, got {_show(value)}")
    if value < low:
        raise InvalidRequest("invalid_params", f"{name} must be at least {low}, got {value}")
    if value > high:
        raise InvalidRequest(code, f"{name} must be at most {high}, got {value}")
    return value


def _title(params: dict[str, Any]) -> str | None:
    title = params.get("title")
    if title is None:
        return None
    if not isinstance(title, str) or not 0 < len(title) <= MAX_TITLE_LENGTH:
        raise InvalidRequest(
            "invalid_params", f"title must be a string of 1-{MAX_TITLE_LENGTH} characters"
        )
    return title


def _sample(params: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _only(params, {"rows", "title"})
    rows = _int(params.get("rows", 1000), "rows", 1, limits.max_sample_rows, "too_many_rows")
    return {"rows": rows, "title": _title(params)}


def _table(params: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _only(params, {"columns", "rows", "title"})
    columns = params.get("columns")
    if not isinstance(columns, list) or not columns:
        raise InvalidRequest("invalid_params", "columns must be a non-empty list")
    if len(columns) > limits.max_table_columns:
        raise InvalidRequest(
            "too_many_columns", f"at most {limits.max_table_columns} columns, got {len(columns)}"
        )
    parsed = [_column(i, c) for i, c in enumerate(columns)]
    rows = params.get("rows")
    if not isinstance(rows, list):
        raise InvalidRequest("invalid_params", "rows must be a list of lists")
    if len(rows) > limits.max_table_rows:
        raise InvalidRequest(
            "too_many_rows", f"at most {limits.max_table_rows} rows, got {len(rows)}"
        )
    types = [ColumnType(c["type"]) for c in parsed]
    checked = [_row(r, row, types) for r, row in enumerate(rows)]
    return {"columns": parsed, "rows": checked, "title": _title(params)}


def _column(index: int, column: object) -> dict[str, str]:
    if not isinstance(column, dict):
        raise InvalidRequest("invalid_params", f"columns[{index}] must be {{name, type}}")
    name, kind = column.get("name"), column.get("type", ColumnType.STRING.value)
    if not isinstance(name, str) or not 0 < len(name) <= MAX_COLUMN_NAME_LENGTH:
        raise InvalidRequest(
            "invalid_params",
            f"columns[{index}].name must be a string of 1-{MAX_COLUMN_NAME_LENGTH} characters",
        )
    if kind not in ColumnType.__members__.values():
        types = ", ".join(t.value for t in ColumnType)
        raise InvalidRequest("invalid_params", f"columns[{index}].type must be one of {types}")
    return {"name": name, "type": str(kind)}


def _row(index: int, row: object, types: list[ColumnType]) -> list[Any]:
    if not isinstance(row, list):
        raise InvalidRequest("invalid_params", f"rows[{index}] must be a list")
    if len(row) != len(types):
        raise InvalidRequest(
            "invalid_params", f"rows[{index}] has {len(row)} values for {len(types)} columns"
        )
    return [
        _cell(f"rows[{index}][{c}]", value, kind)
        for c, (value, kind) in enumerate(zip(row, types))
    ]


def _cell(where: str, value: object, kind: ColumnType) -> Any:
    """Check one value against its column type; dates stay ISO strings (JSON-safe)."""
    if value is None:
        return None
    ok = False
    if kind is ColumnType.STRING:
        ok = isinstance(value, str) and len(value) <= MAX_CELL_TEXT
    elif kind is ColumnType.INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53
    elif kind is ColumnType.NUMBER:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and abs(value) < 1e300)
    elif kind is ColumnType.BOOLEAN:
        ok = isinstance(value, bool)
    elif kind is ColumnType.DATE:
        ok = isinstance(value, str) and _parses(date.fromisoformat, value)
    elif kind is ColumnType.DATETIME:
        ok = isinstance(value, str) and _parses(datetime.fromisoformat, value)
    if not ok:
        raise InvalidRequest(
            "invalid_params", f"{where}: expected {kind.value}, got {_show(value)}"
        )
    return value


def _parses(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return len(text) <= 40


ACTIVITY_STATUSES: Final = ("queued", "running", "done", "failed", "expired",
                            "completed", "stopped", "timeout")
ACTIVITY_SOURCES: Final = ("exports", "runs")


def _activity(params: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _only(params, {"status", "sources", "since", "until", "limit", "title"})
    statuses = _choices(params.get("status", []), "status", ACTIVITY_STATUSES)
    sources = _choices(params.get("sources", list(ACTIVITY_SOURCES)), "sources", ACTIVITY_SOURCES)
    since, until = params.get("since"), params.get("until")
    for name, value in (("since", since), ("until", until)):
        if value is None or (isinstance(value, str) and _parses(datetime.fromisoformat, value)):
            continue
        raise InvalidRequest(
            "invalid_params", f"{name} must be an ISO date or date-time, got {_show(value)}"
        )
    most = limits.max_activity_rows
    limit = _int(params.get("limit", most), "limit", 1, most, "too_many_rows")
    return {"status": statuses, "sources": sources, "since": since, "until": until,
            "limit": limit, "title": _title(params)}


def _choices(value: object, name: str, allowed: tuple[str, ...]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v in allowed for v in value):
        raise InvalidRequest("invalid_params", f"{name} must be a list of {', '.join(allowed)}")
    return list(dict.fromkeys(value))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
