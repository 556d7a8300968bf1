"""Settling a delivery, and the messaging layer's independence from the database layer."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from aiormq.exceptions import ChannelInvalidStateError

from shared.messaging.work import settle

MESSAGING = Path(__file__).resolve().parents[2] / "shared" / "messaging"


async def test_settling_a_void_delivery_is_a_warning_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def lost() -> None:
        raise ChannelInvalidStateError("No active transport in channel")

    with caplog.at_level(logging.WARNING, "shared.messaging.work"):
        await settle(lost())
    (record,) = caplog.records
    assert (record.levelname, record.getMessage()) == (
        "WARNING", "could not settle a delivery; the broker redelivers it")


async def test_settling_a_held_delivery_awaits_it() -> None:
    settled: list[str] = []

    async def ack() -> None:
        settled.append("ack")

    await settle(ack())
    assert settled == ["ack"]


@pytest.mark.parametrize("module", sorted(MESSAGING.glob("*.py")), ids=lambda p: p.name)
def test_the_messaging_layer_does_not_import_the_database_layer(module: Path) -> None:
    # Services hand their consumers a retry policy (shared/db/outage.py) instead.
    imported: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {name for name in imported if name.split(".")[:2] == ["shared", "db"]}
