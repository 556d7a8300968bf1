"""Stored file names: only plain task ids, and only names inside the storage directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.exports.storage import is_task_id, stored_name, stored_path

TRICKS = ["", "..", "../x", "a/b", "a\\b", "x\x00", ".hidden", "x y", "é", "x" * 101, "a.b"]


@pytest.mark.parametrize("task_id", ["0123456789abcdef0123456789abcdef", "a_b-C", "x" * 100])
def test_plain_ids_are_stored_under_their_own_name(task_id: str) -> None:
    assert is_task_id(task_id)
    assert stored_name(task_id) == f"{task_id}.xlsx"


@pytest.mark.parametrize("task_id", TRICKS)
def test_other_ids_have_no_stored_name(task_id: str) -> None:
    assert not is_task_id(task_id)
    with pytest.raises(ValueError):
        stored_name(task_id)


@pytest.mark.parametrize(
    "file_name",
    ["../secret.xlsx", "/etc/passwd", "a/b.xlsx", ".x.xlsx", "x.xlsx.xlsx", "x", "x.xls",
     "..\\x.xlsx", "x\x00.xlsx", ".abc.1234.build"],
)
def test_stored_paths_stay_in_the_directory(file_name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        stored_path(tmp_path, file_name)


def test_a_stored_name_maps_to_the_directory(tmp_path: Path) -> None:
    assert stored_path(tmp_path, "abc_1-2.xlsx") == tmp_path / "abc_1-2.xlsx"
