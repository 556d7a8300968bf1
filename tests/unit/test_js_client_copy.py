"""The edge serves the JavaScript client from its own static files (handlers/client.py):
they must be the source in clients/js/, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ws_edge.handlers.client import CLIENT_DIR, CONTENT_TYPES

SOURCE = Path(__file__).resolve().parents[2] / "clients" / "js"


@pytest.mark.parametrize("name", sorted(CONTENT_TYPES))
def test_the_edge_serves_the_clients_own_file(name: str) -> None:
    source, copy = SOURCE / name, CLIENT_DIR / name
    assert copy.is_file() and copy.read_bytes() == source.read_bytes(), (
        f"{copy} is not {source}: run cp clients/js/warren.js clients/js/warren.d.ts "
        "services/ws_edge/static/client/"
    )
