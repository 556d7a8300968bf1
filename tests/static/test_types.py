"""The code type-checks: mypy in strict mode (pyproject.toml's ``[tool.mypy]``) over every package."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("warren", "shared", "services", "bench", "tests", "examples/shop/warren_example_shop")
# The example application is a package of its own, imported from its folder.
EXAMPLE_ROOT = ROOT / "examples" / "shop"


def test_mypy_strict_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # pyproject.toml's settings, and its cache directory
    monkeypatch.setenv("MYPYPATH", str(EXAMPLE_ROOT))
    report, errors, status = api.run([*PACKAGES])
    assert status == 0, report + errors
