"""``sample``: generated rows, cheap to make, so a benchmark measures the writing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, Final

from warren import Column, ColumnType, Param, Report, ReportContext, Table

COLUMNS: Final = (
    Column("id", ColumnType.INTEGER, 10, ""),
    Column("name", ColumnType.STRING, 16),
    Column("amount", ColumnType.NUMBER),
    Column("created", ColumnType.DATETIME),
    Column("active", ColumnType.BOOLEAN),
)
EPOCH: Final = datetime(2024, 1, 1)


def sample_rows(count: int) -> Iterator[list[Any]]:
    """``count`` deterministic rows."""
    minute = timedelta(minutes=1)
    created = EPOCH
    for i in range(1, count + 1):
        created += minute
        yield [i, f"item-{i:07d}", (i * 7919 % 1_000_000) / 100, created, i % 3 != 0]


def build(params: dict[str, Any], context: ReportContext) -> Table:
    return Table(COLUMNS, sample_rows(params["rows"]), total=params["rows"])


REPORT: Final = Report(
    name="sample",
    description="Generated rows: id, name, amount, created, active.",
    build=build,
    params={"rows": Param("int", "rows to generate", default=1000, minimum=1,
                          maximum=1_000_000)},
)
