"""The three report kinds: their columns and the rows they write.

``sample`` and ``table`` rows are made from the request alone; ``activity`` rows are
read from the database by the worker (on its side of the process boundary) and handed
to the build with the job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from shared.exports.requests import ColumnType, ReportKind
from services.excel_worker.sheet import Column, parse_date, parse_datetime

SAMPLE_COLUMNS: Final = (
    Column("id", ColumnType.INTEGER, 10, ""),
    Column("name", ColumnType.STRING, 16),
    Column("amount", ColumnType.NUMBER),
    Column("created", ColumnType.DATETIME),
    Column("active", ColumnType.BOOLEAN),
)
SAMPLE_EPOCH: Final = datetime(2024, 1, 1)

ACTIVITY_COLUMNS: Final = (
    Column("source", ColumnType.STRING, 10),
    Column("id", ColumnType.STRING, 34),
    Column("name", ColumnType.STRING, 16),
    Column("status", ColumnType.STRING, 12),
    Column("attempts", ColumnType.INTEGER, 10),
    Column("created", ColumnType.DATETIME),
    Column("finished", ColumnType.DATETIME),
    Column("detail", ColumnType.STRING, 40),
)


def sample_rows(count: int) -> Iterator[list[Any]]:
    """``count`` deterministic rows: cheap to make, so a benchmark measures the writing."""
    minute = timedelta(minutes=1)
    created = SAMPLE_EPOCH
    for i in range(1, count + 1):
        created += minute
        yield [i, f"item-{i:07d}", (i * 7919 % 1_000_000) / 100, created, i % 3 != 0]


def table_columns(params: dict[str, Any]) -> tuple[Column, ...]:
    columns = [Column(c["name"], ColumnType(c["type"])) for c in params["columns"]]
    rows: list[list[Any]] = params["rows"]
    sized = []
    for index, column in enumerate(columns):
        if column.type is ColumnType.STRING:
            longest = max(
                (len(str(r[index])) for r in rows[:200] if r[index] is not None), default=0
            )
            width = max(10, min(longest + 2, 60), len(column.name) + 4)
            column = Column(column.name, column.type, width)
        sized.append(column)
    return tuple(sized)


def table_rows(params: dict[str, Any]) -> Iterator[list[Any]]:
    parsers = []
    for column in params["columns"]:
        kind = ColumnType(column["type"])
        parsers.append(
            parse_date if kind is ColumnType.DATE
            else parse_datetime if kind is ColumnType.DATETIME
            else None
        )
    for row in params["rows"]:
        yield [p(v) if p is not None else v for p, v in zip(parsers, row)]


def columns_for(report: ReportKind, params: dict[str, Any]) -> Sequence[Column]:
    if report is ReportKind.SAMPLE:
        return SAMPLE_COLUMNS
    if report is ReportKind.TABLE:
        return table_columns(params)
    return ACTIVITY_COLUMNS


def rows_for(
    report: ReportKind, params: dict[str, Any], prepared: list[list[Any]] | None
) -> tuple[Iterator[Sequence[Any]], int]:
    """The rows to write and how many there are."""
    if report is ReportKind.SAMPLE:
        return sample_rows(params["rows"]), params["rows"]
    if report is ReportKind.TABLE:
        return table_rows(params), len(params["rows"])
    rows = prepared or []
    return iter(rows), len(rows)
