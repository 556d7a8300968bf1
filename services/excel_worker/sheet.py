"""Writing one styled sheet with openpyxl in write-only mode, so memory stays flat.

Pure and blocking: it runs in the build child process (and in bench/excel.py). Only
openpyxl's public write-only API is used: every row is a list of plain values and
``WriteOnlyCell`` objects. A formatted column, and quoted text, use one cell object per
column that takes each row's value in turn: write-only mode serialises a row as soon as
it is appended, so the object is free again for the next row. Each such cell carries a
style, so openpyxl never reuses it as its own scratch cell.

Rows come from a report (``warren.reports``), so each is checked against the columns
as it is written: a row that does not match raises :class:`InvalidRow` naming it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter

from warren.reports import Column, ColumnType

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
MAX_ROWS: Final = 1_048_575  # data rows a sheet holds, below its header
MAX_COLUMNS: Final = 16_384
MAX_DATE_TEXT: Final = 40
# The value types each column takes as they are, by exact type (the fast path); any
# other value goes through _RowConverter._coerce, which accepts subclasses, finite
# floats and ISO date text, and refuses the rest.
EXACT_TYPES: Final = {
    ColumnType.STRING: frozenset({str}),
    ColumnType.INTEGER: frozenset({int}),
    ColumnType.NUMBER: frozenset({int}),
    ColumnType.DATE: frozenset({date, datetime}),
    ColumnType.DATETIME: frozenset({datetime}),
    ColumnType.BOOLEAN: frozenset({bool}),
}


class InvalidRow(ValueError):
    """A report's row that does not match its columns; the message names the row."""


def needs_quoting(text: str) -> bool:
    """Whether text would be read as a formula (or an error literal) if left as it is."""
    return text.startswith(FORMULA_PREFIXES) or text in ERROR_LITERALS


def clean_text(text: str) -> str:
    """Drop the control characters an xlsx file cannot hold (tab, LF and CR stay)."""
    return ILLEGAL_CHARACTERS.sub("", text)


def column_width(column: Column) -> float:
    return column.width or max(DEFAULT_WIDTHS[column.type], min(len(column.name) + 4, MAX_WIDTH))


class _RowConverter:
    """Turns one row of Python values into what ``ws.append`` takes: checked against the
    columns, formatted and safe.

    Every value must fit its column (:class:`InvalidRow` otherwise), so text reaches a
    sheet only through text columns, where each value is checked for what Excel would
    read as a formula. This is the hot loop of every export: a value of its column's
    exact type costs a set lookup, ordinary text one regular-expression search (in C),
    and no such value costs a Python call of its own.
    """

    def __init__(self, ws: WriteOnlyWorksheet, columns: Sequence[Column]) -> None:
        self._columns = columns
        self._rows = 0
        self._quoted = [_quoted_cell(ws) for _ in columns]  # a row may hold several
        self._text: list[int] = []  # text, checked for formulas
        self._plain: list[tuple[int, frozenset[type]]] = []  # values pass as they are
        self._formatted: list[tuple[int, frozenset[type], WriteOnlyCell]] = []  # numbers, dates
        for index, column in enumerate(columns):
            exact = EXACT_TYPES[column.type]
            if column.type is ColumnType.STRING:
                self._text.append(index)
                continue
            number_format = column.number_format
            if number_format is None:
                number_format = NUMBER_FORMATS.get(column.type)
            if number_format:
                cell = WriteOnlyCell(ws)
                cell.number_format = number_format
                self._formatted.append((index, exact, cell))
            else:
                self._plain.append((index, exact))

    def __call__(self, row: Sequence[Any]) -> list[Any]:
        self._rows += 1
        try:
            values = list(row)
        except TypeError:
            raise InvalidRow(f"row {self._rows}: not a sequence of values, "
                             f"got {_show(row)}") from None
        if len(values) != len(self._columns):
            raise InvalidRow(f"row {self._rows} has {len(values)} values for "
                             f"{len(self._columns)} columns")
        needs_care = NEEDS_CARE.search
        for index in self._text:
            value = values[index]
            if value is None:
                continue
            if type(value) is not str:
                value = self._coerce(index, value)
            if needs_care(value):
                values[index] = self._careful(value, index)
        for index, exact in self._plain:
            value = values[index]
            if value is not None and type(value) not in exact:
                values[index] = self._coerce(index, value)
        for index, exact, cell in self._formatted:
            value = values[index]
            if value is None:
                continue
            if type(value) not in exact:
                value = self._coerce(index, value)
            if isinstance(value, datetime) and value.tzinfo is not None:
                value = value.astimezone(timezone.utc).replace(tzinfo=None)
            cell.value = value
            values[index] = cell
        return values

    def _coerce(self, index: int, value: Any) -> Any:
        """A value the fast path did not take: kept, parsed (ISO date text), or refused."""
        kind = self._columns[index].type
        ok = False
        if kind is ColumnType.STRING:
            ok = isinstance(value, str)
        elif kind is ColumnType.INTEGER:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is ColumnType.NUMBER:
            ok = (isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
                  and math.isfinite(value))
        elif kind is ColumnType.BOOLEAN:
            ok = isinstance(value, bool)
        elif isinstance(value, str) and len(value) <= MAX_DATE_TEXT:
            parse = date.fromisoformat if kind is ColumnType.DATE else datetime.fromisoformat
            try:
                return parse(value)
            except ValueError:
                pass
        else:
            ok = isinstance(value, date if kind is ColumnType.DATE else datetime)
        if not ok:
            name = self._columns[index].name
            raise InvalidRow(f"row {self._rows}: column {name!r} ({kind.value}) cannot hold "
                             f"{_show(value)}")
        return value

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
    :class:`InvalidRow` if a row does not match the columns, or there are more rows
    than a sheet holds.
    """
    if not 0 < len(columns) <= MAX_COLUMNS:
        raise InvalidRow(f"a sheet has 1 to {MAX_COLUMNS} columns, the report gave "
                         f"{len(columns)}")
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
    try:
        for row in rows:
            if count == MAX_ROWS:
                raise InvalidRow(f"row {count + 1}: a sheet holds at most {MAX_ROWS} rows")
            ws.append(convert(row))
            count += 1
            if on_row is not None and not count % PROGRESS_EVERY:
                on_row(count)
    except BaseException:
        ws.close()  # ends openpyxl's row writer, so an abandoned sheet leaves it closed
        raise
    ws.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{count + 1}"
    wb.save(path)
    if on_row is not None:
        on_row(count)
    return count


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
