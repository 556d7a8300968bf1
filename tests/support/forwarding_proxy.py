"""An HTTP reverse proxy on loopback that forwards as nginx does with
``proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`` and
``proxy_set_header X-Real-IP $remote_addr``: the client's ``X-Forwarded-For`` is kept and
the client's address appended; ``X-Real-IP`` is replaced by the client's address.

All of 127.0.0.0/8 is loopback on Linux, so tests give each party its own address:
the proxy connects to its upstream from ``source`` (the address a server trusts), and
clients connect to the proxy from addresses of their own
(``HTTPRequest(network_interface=...)``).
"""

from __future__ import annotations

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

# RFC 7230 6.1: these describe one connection, not the message.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length", "host",
})


class _Forward(RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def initialize(self, upstream: str, source: str) -> None:
        self._upstream = upstream
        self._source = source

    async def _forward(self) -> None:
        request = self.request
        headers = HTTPHeaders()
        for name, value in request.headers.get_all():
            if name.lower() not in HOP_BY_HOP | {"x-forwarded-for", "x-real-ip"}:
                headers.add(name, value)
        peer = request.remote_ip or ""
        forwarded = ", ".join(request.headers.get_list("X-Forwarded-For"))
        headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
        headers["X-Real-IP"] = peer
        response = await AsyncHTTPClient().fetch(
            HTTPRequest(
                f"{self._upstream}{request.uri}", method=request.method or "GET",
                headers=headers, body=request.body if request.method in ("POST", "PUT", "PATCH") else None,
                network_interface=self._source, follow_redirects=False,
                allow_nonstandard_methods=True,
            ),
            raise_error=False,
        )
        self.set_status(response.code, response.reason)
        seen: set[str] = set()
        for name, value in response.headers.get_all():
            if name.lower() not in HOP_BY_HOP:
                # The upstream's headers replace this handler's defaults (Content-Type).
                (self.add_header if name in seen else self.set_header)(name, value)
                seen.add(name)
        self.finish(response.body or b"")

    get = head = post = put = patch = delete = options = _forward


class ForwardingProxy:
    """Listens on 127.0.0.1 on a free port and forwards to ``upstream`` from ``source``."""

    def __init__(self, upstream: str, source: str) -> None:
        self._app = Application(
            [(r".*", _Forward, {"upstream": upstream.rstrip("/"), "source": source})],
            log_function=lambda handler: None,  # the access log is the upstream's to write
        )
        self._server: HTTPServer | None = None
        self.port = 0

    def start(self) -> ForwardingProxy:
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(self._app)
        self._server.add_sockets(sockets)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
