"""Authentication shared by the edge's HTTP API handlers (``/api/...``)."""

from __future__ import annotations

import tornado.web

from shared.auth import Identity, TokenError
from shared.web import JsonHandler
from services.ws_edge.deps import EdgeDeps

TOKEN_COOKIE = "warren_token"


def request_token(handler: tornado.web.RequestHandler) -> str | None:
    """The JWT of a request: ``?token=``, then ``Authorization: Bearer``, then the cookie."""
    token = handler.get_query_argument("token", None)
    if token:
        return token
    scheme, _, value = handler.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return handler.get_cookie(TOKEN_COOKIE) or None


class ApiHandler(JsonHandler):
    """A JSON endpoint for signed-in users: ``self.identity`` is set before any method runs.

    A request without a valid token is answered ``401`` with ``token_missing``,
    ``token_invalid`` or ``token_expired``.
    """

    identity: Identity

    def initialize(self, deps: EdgeDeps) -> None:
        self.deps = deps

    def prepare(self) -> None:
        token = request_token(self)
        if token is None:
            self.fail(401, "token_missing", "a token is required (Bearer, ?token= or cookie)")
            return
        try:
            self.identity = self.deps.tokens.verify(token)
        except TokenError as exc:
            self.fail(401, exc.code, exc.message)
