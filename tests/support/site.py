"""Installed distributions for discovery tests, real as importlib.metadata reads them.

A :class:`Site` is a directory on ``sys.path`` holding packages and, for each
distribution, a ``*.dist-info`` directory with ``METADATA`` and ``entry_points.txt``:
exactly what an installed package leaves in site-packages.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root

    def module(self, name: str, source: str) -> None:
        """A package ``name`` whose ``__init__`` is ``source``."""
        package = self.root / name
        package.mkdir()
        (package / "__init__.py").write_text(textwrap.dedent(source))

    def distribution(self, name: str, group: str, entry_points: dict[str, str]) -> None:
        info = self.root / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")


@contextmanager
def site_on_path(root: Path, monkeypatch: pytest.MonkeyPatch, prefix: str) -> Iterator[Site]:
    """A :class:`Site` at ``root`` on ``sys.path``; its modules (named ``prefix…``) are
    forgotten afterwards, so the next test imports its own."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(root))
    try:
        yield Site(root)
    finally:
        for name in set(sys.modules) - before:
            if name.startswith(prefix):
                del sys.modules[name]
