"""Writing sheets: formula neutralisation, formats, progress; read back with openpyxl."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren import Column, ColumnType
from services.excel_worker.reports.activity import COLUMNS as ACTIVITY_COLUMNS
from services.excel_worker.reports.sample import COLUMNS as SAMPLE_COLUMNS
from services.excel_worker.reports.sample import sample_rows
from services.excel_worker.sheet import (
    NEEDS_CARE,
    PROGRESS_EVERY,
    InvalidRow,
    clean_text,
    needs_quoting,
    write_sheet,
)


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@x", "\tx", "\rx", "#N/A", "#REF!"])
def test_dangerous_text_is_quoted(text: str) -> None:
    assert needs_quoting(text)


@pytest.mark.parametrize("text", ["", "x=1", "1-2", "a@b", "Ada", " =1"])
def test_ordinary_text_is_not(text: str) -> None:
    assert not needs_quoting(text)


def test_control_characters_are_dropped() -> None:
    assert clean_text("a\x00b\x07c\td\ne\rf") == "abc\td\ne\rf"


def test_sheet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out.xlsx"
    columns = [Column("=evil", ColumnType.STRING), Column("when", ColumnType.DATETIME),
               Column("day", ColumnType.DATE), Column("n", ColumnType.NUMBER)]
    aware = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    rows: list[list[object]] = [
        ["=cmd|' /C calc'!A0", aware, date(2024, 2, 3), 2.5], ["bell\x07", None, None, None]
    ]
    seen: list[int] = []
    assert write_sheet(str(path), "data", columns, rows, title="T", on_row=seen.append) == 2
    assert seen == [2]
    sheet = openpyxl.load_workbook(path)["data"]
    header = sheet["A1"]
    assert header.value == "=evil" and header.data_type == "s" and header.quotePrefix
    assert sheet["A2"].value == "=cmd|' /C calc'!A0" and sheet["A2"].data_type == "s"
    assert sheet["B2"].value == datetime(2024, 1, 1, 10, 0)  # stored in UTC
    assert sheet["C2"].number_format == "yyyy-mm-dd" and sheet["D2"].number_format == "#,##0.00"
    assert sheet["A3"].value == "bell"
    with zipfile.ZipFile(path) as archive:
        assert b"<f>" not in archive.read("xl/worksheets/sheet1.xml")


def test_sample_rows_report_progress_every_1024(tmp_path: Path) -> None:
    seen: list[int] = []
    count = write_sheet(str(tmp_path / "s.xlsx"), "sample", SAMPLE_COLUMNS, sample_rows(2500),
                        on_row=seen.append)
    assert count == 2500 and seen == [1024, 2048, 2500]
    sheet = openpyxl.load_workbook(tmp_path / "s.xlsx", read_only=True)["sample"]
    rows = list(sheet.iter_rows(min_row=2, max_row=3, values_only=True))
    assert rows[0][:2] == (1, "item-0000001") and rows[1][0] == 2


def test_sample_report_every_row_and_every_style(tmp_path: Path) -> None:
    """Formatted cells are reused from row to row: every row must still hold its own values."""
    path = tmp_path / "sample.xlsx"
    assert write_sheet(str(path), "sample", SAMPLE_COLUMNS, sample_rows(3000), title="S") == 3000
    book = openpyxl.load_workbook(path)
    sheet = book["sample"]
    assert book.properties.title == "S"
    assert [c.value for c in sheet[1]] == ["id", "name", "amount", "created", "active"]
    for cell in sheet[1]:
        assert cell.font.b and cell.font.color.rgb == "00FFFFFF"
        assert cell.fill.fill_type == "solid" and cell.fill.fgColor.rgb == "001F4E78"
        assert cell.alignment.horizontal == "center"
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:E3001"
    widths = [sheet.column_dimensions[letter].width for letter in "ABCDE"]
    assert widths == [10, 16, 14, 20, 10]  # "active": the name plus 4
    written = [tuple(c.value for c in row) for row in sheet.iter_rows(min_row=2)]
    assert written == [tuple(r) for r in sample_rows(3000)]
    formats = {(c.column_letter, c.number_format) for r in sheet.iter_rows(min_row=2) for c in r}
    assert formats == {("A", "General"), ("B", "General"), ("C", "#,##0.00"),
                       ("D", "yyyy-mm-dd hh:mm:ss"), ("E", "General")}


def test_values_of_their_columns_types_are_written_and_text_is_neutralised(
    tmp_path: Path,
) -> None:
    path = tmp_path / "typed.xlsx"
    columns = [Column("s", ColumnType.STRING), Column("n", ColumnType.INTEGER),
               Column("b", ColumnType.BOOLEAN), Column("d", ColumnType.DATE),
               Column("t", ColumnType.DATETIME), Column("x", ColumnType.NUMBER)]

    class Label(str):  # a str subclass (an enum member, say) is text too
        pass

    rows: list[list[object]] = [
        ["=1+1", 3, True, date(2024, 1, 2), datetime(2024, 1, 2, 3, 4), Decimal("2.5")],
        [Label("+9"), None, None, "2024-03-04", "2024-03-04T05:06:07", 1],
    ]
    write_sheet(str(path), "t", columns, rows)
    sheet = openpyxl.load_workbook(path)["t"]
    assert sheet["A2"].value == "=1+1" and sheet["A2"].data_type == "s" and sheet["A2"].quotePrefix
    assert sheet["A3"].value == "+9" and sheet["A3"].quotePrefix
    assert sheet["B2"].value == 3 and sheet["B2"].number_format == "#,##0"
    assert sheet["C2"].value is True and sheet["D2"].number_format == "yyyy-mm-dd"
    # ISO text in date columns (as SQLite holds dates) is written as a date.
    assert sheet["D3"].value == datetime(2024, 3, 4) and sheet["D3"].number_format == "yyyy-mm-dd"
    assert sheet["E3"].value == datetime(2024, 3, 4, 5, 6, 7)
    assert sheet["F2"].value == 2.5 and sheet["F3"].value == 1
    with zipfile.ZipFile(path) as archive:
        assert b"<f>" not in archive.read("xl/worksheets/sheet1.xml")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["a", 1], "row 2 has 2 values for 3 columns"),
        (["a", 1, True, "extra"], "row 2 has 4 values for 3 columns"),
        ([1, 1, True], "row 2: column 's' (string) cannot hold 1"),
        (["=1+1", "2", True], "row 2: column 'n' (integer) cannot hold '2'"),
        (["a", True, True], "row 2: column 'n' (integer) cannot hold True"),
        (["a", 1, 1], "row 2: column 'b' (boolean) cannot hold 1"),
        (["a", float("nan"), True], "row 2: column 'n' (integer) cannot hold nan"),
        (7, "row 2: not a sequence of values"),
    ],
)
def test_a_row_that_does_not_fit_its_columns_is_refused_by_number(
    tmp_path: Path, row: object, message: str,
) -> None:
    columns = [Column("s"), Column("n", ColumnType.INTEGER), Column("b", ColumnType.BOOLEAN)]
    with pytest.raises(InvalidRow) as caught:
        write_sheet(str(tmp_path / "bad.xlsx"), "t", columns, [["ok", 1, False], row])  # type: ignore[list-item]
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("kind", "value"),
    [(ColumnType.NUMBER, float("inf")), (ColumnType.NUMBER, True), (ColumnType.DATE, "monday"),
     (ColumnType.DATETIME, date(2024, 1, 1)), (ColumnType.DATETIME, "2024-13-01T00:00")],
)
def test_dates_and_numbers_must_be_real(tmp_path: Path, kind: ColumnType, value: object) -> None:
    with pytest.raises(InvalidRow, match="row 1: column 'c'"):
        write_sheet(str(tmp_path / "bad.xlsx"), "t", [Column("c", kind)], [[value]])


def test_rows_are_read_one_at_a_time_while_the_sheet_is_written(tmp_path: Path) -> None:
    """A report's rows stream: each is taken from its iterator only once the rows before
    it are written (progress has reached them), never gathered first."""
    written = [0]
    lag = []

    def rows() -> Iterator[list[object]]:
        for i in range(1, 5001):
            lag.append(i - 1 - written[0])  # rows taken but not yet reported written
            yield [i]

    write_sheet(str(tmp_path / "s.xlsx"), "s", [Column("n", ColumnType.INTEGER)], rows(),
                on_row=lambda count: written.__setitem__(0, count))
    assert written[0] == 5000
    assert max(lag) < PROGRESS_EVERY  # materialised rows would lag by up to 4999


def test_activity_columns_are_styled(tmp_path: Path) -> None:
    path = tmp_path / "activity.xlsx"
    row = ["export", "t1", "sample", "done", 1, datetime(2024, 5, 1, 10, 0), None, "=bad"]
    write_sheet(str(path), "activity", ACTIVITY_COLUMNS, [row])
    sheet = openpyxl.load_workbook(path)["activity"]
    assert sheet["E2"].number_format == "#,##0"
    assert sheet["F2"].number_format == "yyyy-mm-dd hh:mm:ss"
    assert sheet["H2"].value == "=bad" and sheet["H2"].quotePrefix
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:H2"


TOKENS = st.characters(max_codepoint=0x7F) | st.sampled_from(["#N/A", "#REF!", "#NAME?", "é"])


@given(st.lists(TOKENS, max_size=6).map("".join))
def test_the_fast_check_finds_exactly_the_text_that_needs_care(text: str) -> None:
    assert (NEEDS_CARE.search(text) is not None) == (needs_quoting(text) or clean_text(text) != text)
