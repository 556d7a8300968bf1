"""Refusing WebSocket upgrades at once while too many wait for their bindings.

A connect storm (every client of a lost edge reconnecting at once) brings more upgrades
than the broker binds keys for: they would queue for their bindings, holding memory, while
their clients give up. Past ``WARREN_EDGE_MAX_OPENING`` upgrades waiting at once
(``Hub.admitting``), ``GET /ws`` is answered ``503 overloaded`` with ``Retry-After: 1``
(docs/protocol.md 5.1) straight from the HTTP connection, as soon as its headers are read:
before Tornado routes the request, builds a handler or writes an access-log line. In a
storm such refusals are most of what the edge does, so their cost decides how much of the
edge is left for the sockets it accepts. They are counted in
``warren_edge_handshakes_refused_total``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from tornado import httputil

WS_PATH: Final = "/ws"
OVERLOADED: Final = "overloaded"
_BODY: Final = orjson.dumps(
    {"error": OVERLOADED, "message": "too many connections are opening; retry shortly"}
)


class UpgradeShedder(httputil.HTTPServerConnectionDelegate):
    """Wraps the application: refuses ``GET /ws`` while ``overloaded()``, passes the rest."""

    def __init__(
        self,
        app: httputil.HTTPServerConnectionDelegate,
        overloaded: Callable[[], bool],
        refused: Callable[[], None],
    ) -> None:
        self._app = app
        self._overloaded = overloaded
        self._refused = refused

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Gate(self, self._app.start_request(server_conn, request_conn), request_conn)

    def on_close(self, server_conn: object) -> None:
        self._app.on_close(server_conn)

    def shed(self, start_line: httputil.RequestStartLine, connection: httputil.HTTPConnection) -> bool:
        """Refuse this request if it is an upgrade and the edge is overloaded."""
        if start_line.path.partition("?")[0] != WS_PATH or not self._overloaded():
            return False
        self._refused()
        headers = httputil.HTTPHeaders({
            "Content-Type": "application/json",
            "Content-Length": str(len(_BODY)),
            "Retry-After": "1",
        })
        connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 503, "Service Unavailable"), headers, _BODY
        )
        connection.finish()
        return True


class _Gate(httputil.HTTPMessageDelegate):
    """One request: either refused by the shedder, or handed to the application whole."""

    __slots__ = ("_shedder", "_inner", "_connection", "_shed")

    def __init__(
        self,
        shedder: UpgradeShedder,
        inner: httputil.HTTPMessageDelegate,
        connection: httputil.HTTPConnection,
    ) -> None:
        self._shedder = shedder
        self._inner = inner
        self._connection = connection
        self._shed = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        if self._shedder.shed(start_line, self._connection):
            self._shed = True
            return None
        return self._inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self._shed else self._inner.data_received(chunk)

    def finish(self) -> None:
        if not self._shed:
            self._inner.finish()

    def on_connection_close(self) -> None:
        if not self._shed:
            self._inner.on_connection_close()
