"""``table``: the columns and rows the requester sends, as JSON.

The schema bounds the two lists (the edge checks that at once); the cells are checked
against their columns by :func:`check`, on the worker, before anything is built.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any, Final

from warren import ArgsError, Column, ColumnType, Param, Report, ReportContext, Table

MAX_COLUMN_NAME_LENGTH: Final = 100
MAX_CELL_TEXT: Final = 32767  # Excel's limit for one cell
MAX_DATE_TEXT: Final = 40
SIZED_ROWS: Final = 200  # rows read to fit a text column's width
TYPES: Final = ", ".join(t.value for t in ColumnType)


def check(params: dict[str, Any]) -> None:
    """Every column is ``{name, type}`` and every row has one value of its column's type
    per column; :class:`ArgsError` naming the first that is not."""
    columns = params["columns"]
    if not isinstance(columns, list) or not columns:
        raise ArgsError("columns must be a non-empty list")
    types = [_column(i, c) for i, c in enumerate(columns)]
    rows = params["rows"]
    if not isinstance(rows, list):
        raise ArgsError("rows must be a list of lists")
    for index, row in enumerate(rows):
        if not isinstance(row, list):
            raise ArgsError(f"rows[{index}] must be a list")
        if len(row) != len(types):
            raise ArgsError(f"rows[{index}] has {len(row)} values for {len(types)} columns")
        for c, (value, kind) in enumerate(zip(row, types)):
            if value is not None and not _fits(value, kind):
                raise ArgsError(f"rows[{index}][{c}]: expected {kind.value}, got {_show(value)}")


def _column(index: int, column: object) -> ColumnType:
    if not isinstance(column, dict) or set(column) - {"name", "type"}:
        raise ArgsError(f"columns[{index}] must be {{name, type}}")
    name, kind = column.get("name"), column.get("type", ColumnType.STRING.value)
    if not isinstance(name, str) or not 0 < len(name) <= MAX_COLUMN_NAME_LENGTH:
        raise ArgsError(f"columns[{index}].name must be a string of 1-{MAX_COLUMN_NAME_LENGTH} "
                        f"characters")
    if kind not in ColumnType.__members__.values():
        raise ArgsError(f"columns[{index}].type must be one of {TYPES}")
    return ColumnType(kind)


def _fits(value: object, kind: ColumnType) -> bool:
    if kind is ColumnType.STRING:
        return isinstance(value, str) and len(value) <= MAX_CELL_TEXT
    if kind is ColumnType.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53
    if kind is ColumnType.NUMBER:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and abs(value) < 1e300)
    if kind is ColumnType.BOOLEAN:
        return isinstance(value, bool)
    parse = date.fromisoformat if kind is ColumnType.DATE else datetime.fromisoformat
    if not isinstance(value, str) or len(value) > MAX_DATE_TEXT:
        return False
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def columns_of(params: dict[str, Any]) -> tuple[Column, ...]:
    """The columns, text ones as wide as their first rows need."""
    rows: list[list[Any]] = params["rows"][:SIZED_ROWS]
    columns = []
    for index, spec in enumerate(params["columns"]):
        kind = ColumnType(spec.get("type", ColumnType.STRING.value))
        width = None
        if kind is ColumnType.STRING:
            longest = max((len(str(r[index])) for r in rows if r[index] is not None), default=0)
            width = max(10, min(longest + 2, 60), len(spec["name"]) + 4)
        columns.append(Column(spec["name"], kind, width))
    return tuple(columns)


def build(params: dict[str, Any], context: ReportContext) -> Table:
    # Date and date-time cells stay ISO text: the sheet writer parses them.
    rows: list[list[Any]] = params["rows"]
    return Table(columns_of(params), iter(rows), total=len(rows))


REPORT: Final = Report(
    name="table",
    description="The columns and rows you give, as JSON.",
    build=build,
    params={
        "columns": Param("json", '[{"name", "type"}, ...]; type: ' + TYPES + " (default string)",
                         max_length=50, max_bytes=1 << 16),
        "rows": Param("json", "lists of values, one per column", max_length=10_000,
                      max_bytes=1 << 20),
    },
    check=check,
)
