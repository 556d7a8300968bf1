"""``GET /client/warren.js`` and ``/client/warren.d.ts``: the JavaScript client, served by
the edge with the console's headers and open to every origin (docs/protocol.md 5.5)."""

from __future__ import annotations

import pytest
from tornado.httpclient import AsyncHTTPClient

from services.ws_edge.handlers.client import CLIENT_DIR
from services.ws_edge.handlers.console import CONTENT_SECURITY_POLICY
from services.ws_edge.server import EdgeServer


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("warren.js", "text/javascript; charset=utf-8"),
     ("warren.d.ts", "application/typescript; charset=utf-8")],
)
async def test_the_client_is_served_with_its_type_and_the_consoles_headers(
    edge: EdgeServer, name: str, content_type: str
) -> None:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{edge.port}/client/{name}")
    assert response.body == (CLIENT_DIR / name).read_bytes()
    headers = response.headers
    assert headers["Content-Type"] == content_type
    assert headers["Cache-Control"] == "no-cache"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["ETag"]


@pytest.mark.parametrize("path", ["/client/", "/client/other.js", "/client/../app.py",
                                  "/client/warren.js.map"])
async def test_nothing_else_is_served_under_client(edge: EdgeServer, path: str) -> None:
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{edge.port}{path}", raise_error=False
    )
    assert response.code == 404
