"""``GET /client/warren.js`` and ``GET /client/warren.d.ts``: the JavaScript client, for
pages that import it from the edge they connect to (docs/protocol.md, 5.5).

``clients/js/`` is the client's source and its npm package. The edge ships a copy of
its two files in its own static files (``static/client/``), since an installed edge (the
image, a wheel) holds no ``clients/`` directory; tests/unit/test_js_client_copy.py fails
when the copy is not byte for byte the source, and names the command that copies it.
"""

from __future__ import annotations

import re
from typing import Final

from services.ws_edge.handlers.console import STATIC_DIR, ConsoleFileHandler, Route

CLIENT_DIR: Final = STATIC_DIR / "client"
CONTENT_TYPES: Final = {
    "warren.js": "text/javascript; charset=utf-8",
    "warren.d.ts": "application/typescript; charset=utf-8",  # no type is registered for it
}


class ClientFileHandler(ConsoleFileHandler):
    """The console's headers (revalidated on every load), and open to every origin: the
    file is public, and a page on another origin imports a module script through CORS."""

    def get_content_type(self) -> str:
        return CONTENT_TYPES[self.path]

    def set_extra_headers(self, path: str) -> None:
        super().set_extra_headers(path)
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Cross-Origin-Resource-Policy", "cross-origin")


def client_routes() -> list[Route]:
    files = "|".join(map(re.escape, CONTENT_TYPES))
    return [(rf"/client/({files})", ClientFileHandler, {"path": str(CLIENT_DIR)})]
