"""Writing sheets: formula neutralisation, formats, progress; read back with openpyxl."""

from __future__ import annotations

import zipfile
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import openpyxl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.exports.requests import ColumnType
from services.excel_worker.reports import ACTIVITY_COLUMNS, SAMPLE_COLUMNS, sample_rows
from services.excel_worker.sheet import NEEDS_CARE, Column, clean_text, needs_quoting, write_sheet


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


def test_text_is_neutralised_whatever_the_column_type(tmp_path: Path) -> None:
    path = tmp_path / "typed.xlsx"
    columns = [Column("n", ColumnType.INTEGER), Column("b", ColumnType.BOOLEAN),
               Column("d", ColumnType.DATE)]

    class Label(str):  # a str subclass (an enum member, say) is text too
        pass

    rows: list[list[object]] = [
        ["=1+1", "@x", "-2"], [3, True, date(2024, 1, 2)], [Label("+9"), None, None]
    ]
    write_sheet(str(path), "t", columns, rows)
    sheet = openpyxl.load_workbook(path)["t"]
    assert [c.value for c in sheet[2]] == ["=1+1", "@x", "-2"]
    assert all(c.data_type == "s" and c.quotePrefix for c in sheet[2])
    assert sheet["A4"].value == "+9" and sheet["A4"].quotePrefix
    assert sheet["A3"].value == 3 and sheet["A3"].number_format == "#,##0"
    assert sheet["B3"].value is True and sheet["C3"].number_format == "yyyy-mm-dd"
    with zipfile.ZipFile(path) as archive:
        assert b"<f>" not in archive.read("xl/worksheets/sheet1.xml")


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
