"""Writing one styled sheet with openpyxl in write-only mode, so memory stays flat.

Pure and blocking: it runs in the build child process (and in bench/excel.py). Only
openpyxl's public write-only API is used: every row is a list of plain values and
``WriteOnlyCell`` objects. A formatted column, and quoted text, use one cell object per
column that takes each row's value in turn: write-only mode serialises a row as soon as
it is appended, so the object is free again for the next row. Each such cell carries a
style, so openpyxl never reuses it as its own scratch cell.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter

from shared.exports.requests import ColumnType

if TYPE_CHECKING:
    from openpyxl.worksheet._write_only import WriteOnlyWorksheet

# A cell whose text starts with one of these could become a formula in Excel (or in a
# CSV saved from the sheet): formula injection.
FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")
ERROR_LITERALS: Final = frozenset(ERROR_CODES)  # "#N/A", "#REF!", ...: read as errors
# The control characters openpyxl refuses (its ILLEGAL_CHARACTERS_RE); tab, LF, CR stay.
ILLEGAL_CHARACTERS: Final = re.compile(r"[\000-\010]|[\013-\014]|[\016-\037]")
# Text that needs_quoting() or clean_text() would change, found with one search.
NEEDS_CARE: Final = re.compile(
    r"\A(?:[%s]|(?:%s)\Z)|%s" % (
        re.escape("".join(FORMULA_PREFIXES)),
        "|".join(re.escape(code) for code in sorted(ERROR_LITERALS)),
        ILLEGAL_CHARACTERS.pattern,
    )
)

NUMBER_FORMATS: Final = {
    ColumnType.INTEGER: "#,##0",
    ColumnType.NUMBER: "#,##0.00",
    ColumnType.DATE: "yyyy-mm-dd",
    ColumnType.DATETIME: "yyyy-mm-dd hh:mm:ss",
}
DEFAULT_WIDTHS: Final = {
    ColumnType.STRING: 24,
    ColumnType.INTEGER: 12,
    ColumnType.NUMBER: 14,
    ColumnType.DATE: 12,
    ColumnType.DATETIME: 20,
    ColumnType.BOOLEAN: 9,
}
MAX_WIDTH: Final = 60
HEADER_FONT: Final = Font(bold=True, color="FFFFFF")
HEADER_FILL: Final = PatternFill("solid", fgColor="1F4E78")
HEADER_ALIGNMENT: Final = Alignment(horizontal="center", vertical="center")
PROGRESS_EVERY: Final = 1024  # rows between two on_row calls


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    width: float | None = None
    number_format: str | None = None  # None: the type's default; "": General


def needs_quoting(text: str) -> bool:
    """Whether text would be read as a formula (or an error literal) if left as it is."""
    return text.startswith(FORMULA_PREFIXES) or text in ERROR_LITERALS


def clean_text(text: str) -> str:
    """Drop the control characters an xlsx file cannot hold (tab, LF and CR stay)."""
    return ILLEGAL_CHARACTERS.sub("", text)


def column_width(column: Column) -> float:
    return column.width or max(DEFAULT_WIDTHS[column.type], min(len(column.name) + 4, MAX_WIDTH))


class _RowConverter:
    """Turns one row of Python values into what ``ws.append`` takes, formatted and safe.

    Text in any column is checked, so a supplied value never becomes a formula whatever
    the column's declared type. This is the hot loop of every export: ordinary text costs
    one regular-expression search (in C), and no value costs a Python call of its own.
    """

    def __init__(self, ws: WriteOnlyWorksheet, columns: Sequence[Column]) -> None:
        self._quoted = [_quoted_cell(ws) for _ in columns]  # a row may hold several
        self._unformatted: list[int] = []  # values pass as they are, text once checked
        self._formatted: list[tuple[int, WriteOnlyCell]] = []  # numbers and dates
        for index, column in enumerate(columns):
            number_format = column.number_format
            if number_format is None:
                number_format = NUMBER_FORMATS.get(column.type)
            if number_format and column.type is not ColumnType.STRING:
                cell = WriteOnlyCell(ws)
                cell.number_format = number_format
                self._formatted.append((index, cell))
            else:
                self._unformatted.append(index)

    def __call__(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        needs_care = NEEDS_CARE.search
        for index in self._unformatted:
            value = values[index]
            if isinstance(value, str) and needs_care(value):
                values[index] = self._careful(value, index)
        for index, cell in self._formatted:
            value = values[index]
            if value is None:
                continue
            if isinstance(value, str):
                if needs_care(value):
                    values[index] = self._careful(value, index)
                continue
            if isinstance(value, datetime) and value.tzinfo is not None:
                value = value.astimezone(timezone.utc).replace(tzinfo=None)
            cell.value = value
            values[index] = cell
        return values

    def _careful(self, value: str, index: int) -> Any:
        """Text that may be read as a formula or holds control characters."""
        value = clean_text(value)
        if not needs_quoting(value):
            return value
        # A plain string with Excel's quote prefix: shown as typed, and editing the cell
        # in Excel does not turn it into a formula either.
        cell = self._quoted[index]
        cell.value = value
        cell.data_type = "s"  # openpyxl infers "f" for text starting with "="
        return cell


def _quoted_cell(ws: WriteOnlyWorksheet) -> WriteOnlyCell:
    cell = WriteOnlyCell(ws)
    cell.quotePrefix = True
    return cell


def header_cell(ws: WriteOnlyWorksheet, name: str) -> WriteOnlyCell:
    cell = WriteOnlyCell(ws, value=clean_text(name))
    if needs_quoting(cell.value):
        cell.data_type = "s"
        cell.quotePrefix = True
    cell.font = HEADER_FONT
    cell.fill = HEADER_FILL
    cell.alignment = HEADER_ALIGNMENT
    return cell


def write_sheet(
    path: str,
    sheet_title: str,
    columns: Sequence[Column],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    on_row: Callable[[int], None] | None = None,
) -> int:
    """Write ``rows`` under a styled header to ``path``; return how many rows were written.

    ``on_row(n)`` is called every ``PROGRESS_EVERY`` rows and once at the end.
    """
    wb = Workbook(write_only=True)
    if title:
        wb.properties.title = clean_text(title)
    ws = wb.create_sheet(sheet_title)
    for index, column in enumerate(columns, 1):
        ws.column_dimensions[get_column_letter(index)].width = column_width(column)
    ws.freeze_panes = "A2"
    ws.append([header_cell(ws, c.name) for c in columns])
    convert = _RowConverter(ws, columns)
    count = 0
    for row in rows:
        ws.append(convert(row))
        count += 1
        if on_row is not None and not count % PROGRESS_EVERY:
            on_row(count)
    ws.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{count + 1}"
    wb.save(path)
    if on_row is not None:
        on_row(count)
    return count


def parse_date(value: Any) -> Any:
    return date.fromisoformat(value) if isinstance(value, str) else value


def parse_datetime(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
