"""Writing sheets: formula neutralisation, formats, progress; read back with openpyxl."""

from __future__ import annotations

import zipfile
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import openpyxl
import pytest

from services.excel_worker.reports import SAMPLE_COLUMNS, sample_rows
from services.excel_worker.sheet import Column, clean_text, needs_quoting, write_sheet
from services.excel_worker.spec import ColumnType


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
    rows = [["=cmd|' /C calc'!A0", aware, date(2024, 2, 3), 2.5], ["bell\x07", None, None, None]]
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
