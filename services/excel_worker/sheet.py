"""Writing one styled sheet with openpyxl in write-only mode, so memory stays flat.

Pure and blocking: it runs in the build child process (and in bench/excel.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import partial
from typing import Any, Final

from openpyxl import Workbook
from openpyxl.cell import Cell, WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

from services.excel_worker.spec import ColumnType

# A cell whose text starts with one of these could become a formula in Excel (or in a
# CSV saved from the sheet): formula injection.
FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")
ILLEGAL_CHARACTERS: Final = re.compile(r"[\000-\010]|[\013-\014]|[\016-\037]")

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


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    width: float | None = None
    number_format: str | None = None  # None: the type's default; "": General


def needs_quoting(text: str) -> bool:
    """Whether text would be read as a formula (or an error literal) if left as it is."""
    return text.startswith(FORMULA_PREFIXES) or text in ERROR_CODES


def clean_text(text: str) -> str:
    """Drop the control characters an xlsx file cannot hold (tab, LF and CR stay)."""
    return ILLEGAL_CHARACTERS.sub("", text)


class _FixedStyleCell(Cell):
    """A reusable write-only cell whose style never changes: its style id is looked up once."""

    __slots__ = ("_fixed_style_id",)

    def __init__(self, ws: WriteOnlyWorksheet) -> None:
        super().__init__(ws)
        self._fixed_style_id: int | None = None

    @property
    def style_id(self) -> int:
        if self._fixed_style_id is None:
            self._fixed_style_id = super().style_id
        return self._fixed_style_id


class _Converter:
    """Turns a column's Python values into what ``ws.append`` takes, styled and safe.

    Styled cells are reused per column: openpyxl writes each appended row at once, so a
    cell object can carry the next row's value afterwards.
    """

    def __init__(self, ws: WriteOnlyWorksheet, column: Column) -> None:
        self._type = column.type
        self._styled: _FixedStyleCell | None = None
        number_format = column.number_format
        if number_format is None:
            number_format = NUMBER_FORMATS.get(column.type)
        if number_format:
            self._styled = _FixedStyleCell(ws)
            self._styled.number_format = number_format
        self._quoted = _FixedStyleCell(ws)
        self._quoted.quotePrefix = True

    def function(self) -> Callable[[Any], Any] | None:
        """The per-value conversion for this column; None: values pass as they are."""
        if self._type is ColumnType.STRING:
            return self.text
        if self._styled is not None:
            return self.styled
        return None

    def styled(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        cell = self._styled
        assert cell is not None
        cell.value = value
        return cell

    def text(self, value: str) -> Any:
        if not value.isprintable():
            value = clean_text(value)
        if needs_quoting(value):
            # Stored as a plain string with Excel's quote prefix: it is shown as typed,
            # and editing the cell in Excel does not turn it into a formula either.
            cell = self._quoted
            cell.value = value
            cell.data_type = "s"
            return cell
        return value


def header_cell(ws: WriteOnlyWorksheet, name: str) -> WriteOnlyCell:
    cell = WriteOnlyCell(ws, value=clean_text(name))
    if needs_quoting(cell.value):
        cell.data_type = "s"
        cell.quotePrefix = True
    cell.font = HEADER_FONT
    cell.fill = HEADER_FILL
    cell.alignment = HEADER_ALIGNMENT
    return cell


def _values_to_row(
    ws: WriteOnlyWorksheet,
    convert: Sequence[Callable[[Any], Any] | None],
    fallback: Callable[[str], Any],
    values: Sequence[Any],
    row_idx: int,
) -> Iterator[Cell]:
    """openpyxl's ``WriteOnlyWorksheet._values_to_row``, converting and styling as it goes.

    openpyxl first tries to assign a ``Cell`` as a value (which raises, and is caught) and
    then allocates a fresh cell; our styled cells are recognised up front instead, and
    columns that need no conversion cost no call. Installed per worksheet by write_sheet;
    tests read the files back.
    """
    cell = WriteOnlyCell(ws)
    col_idx = 0
    for function, value in zip(convert, values):
        col_idx += 1
        if value is None:
            continue
        if function is not None:
            value = function(value)
        elif value.__class__ is str:  # never expected in a typed column; still neutralised
            value = fallback(value)
        if isinstance(value, Cell):
            value.column = col_idx
            value.row = row_idx
            yield value
            continue
        cell.value = value
        cell.column = col_idx
        cell.row = row_idx
        yield cell
        if cell.has_style:  # a date got its default format: the next value needs a clean cell
            cell = WriteOnlyCell(ws)


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

    ``on_row(n)`` is called after every 1024 rows (and at the end) for progress.
    """
    wb = Workbook(write_only=True)
    if title:
        wb.properties.title = clean_text(title)
    ws = wb.create_sheet(sheet_title)
    for index, column in enumerate(columns, 1):
        width = column.width or max(DEFAULT_WIDTHS[column.type], min(len(column.name) + 4, MAX_WIDTH))
        ws.column_dimensions[get_column_letter(index)].width = width
    ws.freeze_panes = "A2"
    ws.append([header_cell(ws, c.name) for c in columns])
    converters = [_Converter(ws, c) for c in columns]
    functions = [c.function() for c in converters]
    ws._values_to_row = partial(  # type: ignore[method-assign]
        _values_to_row, ws, functions, converters[0].text
    )
    count = 0
    for row in rows:
        ws.append(row)
        count += 1
        if on_row is not None and not count & 1023:
            on_row(count)
    last = get_column_letter(len(columns))
    ws.auto_filter.ref = f"A1:{last}{count + 1}"
    wb.save(path)
    if on_row is not None:
        on_row(count)
    return count


def parse_date(value: Any) -> Any:
    return date.fromisoformat(value) if isinstance(value, str) else value


def parse_datetime(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
