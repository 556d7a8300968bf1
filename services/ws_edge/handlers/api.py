"""Authentication shared by the edge's HTTP API handlers (``/api/...``) and ``/ws``."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Final

import tornado.web
from sqlalchemy.exc import SQLAlchemyError

from shared.auth import Identity, TokenError
from shared.auth.current import verify_current
from shared.web import JsonHandler
from services.ws_edge.deps import EdgeDeps
from services.ws_edge.errors import INTERNAL, CookieNotAccepted, describe

log = logging.getLogger(__name__)

TOKEN_COOKIE = "warren_token"
# The browser WebSocket API sets no headers but the offered subprotocols: a client puts
# its token in one, ``warren.auth.<jwt>`` (a JWT's characters are all valid there), so
# it stays out of the URL and of the access logs that record URLs.
AUTH_SUBPROTOCOL_PREFIX: Final = "warren.auth."
# Methods that change nothing. A browser attaches cookies to any site's cross-site forms
# and fetches, so the cookie authenticates only these (and the WebSocket, which checks
# the Origin); a POST needs the token in a header or the query, which a foreign page
# cannot supply. That holds whatever the browser's SameSite or Origin behaviour.
COOKIE_METHODS: Final = frozenset({"GET", "HEAD"})


def request_token(
    handler: tornado.web.RequestHandler, *, cookie: bool = True, subprotocol: bool = False
) -> str | None:
    """The JWT of a request: ``?token=``, then ``Authorization: Bearer``, then (with
    ``subprotocol``, for ``GET /ws``) a ``warren.auth.<jwt>`` WebSocket subprotocol, then
    (with ``cookie``) the cookie. The credentials a client sends on purpose come before
    the cookie, which a browser attaches by itself and may hold an older token."""
    token = handler.get_query_argument("token", None)
    if token:
        return token
    headers = handler.request.headers
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if subprotocol:
        # Parsed as Tornado parses the header to choose the subprotocol it answers.
        for offered in headers.get("Sec-WebSocket-Protocol", "").split(","):
            name = offered.strip()
            if name.startswith(AUTH_SUBPROTOCOL_PREFIX) and name != AUTH_SUBPROTOCOL_PREFIX:
                return name.removeprefix(AUTH_SUBPROTOCOL_PREFIX)
    return (handler.get_cookie(TOKEN_COOKIE) or None) if cookie else None


async def authenticate(deps: EdgeDeps, token: str) -> Identity:
    """Who ``token`` speaks for; :class:`TokenError` if it is refused. With
    ``WARREN_EDGE_CHECK_USERS`` its user must still exist (shared/auth/current.py).
    Database failures are raised as they are."""
    return await verify_current(deps.tokens, token, deps.known_users)


def lookup_failed(exc: SQLAlchemyError) -> tuple[int, str, str]:
    """Status, code and message for a user lookup that failed (the error table's: the
    database away is ``503 database_unavailable``)."""
    spec = describe(exc)
    if spec == INTERNAL:
        log.error("user lookup failed", exc_info=exc)
    else:
        log.warning("user lookup failed", extra={"error": spec.code, "reason": type(exc).__name__})
    return spec.status, spec.code, spec.message or "internal error"


class EdgeJsonHandler(JsonHandler):
    """A JSON endpoint of the edge. An exception its method lets through is answered from
    the edge's error table when the table knows it (the database away:
    ``503 database_unavailable``, the broker away: ``503 unavailable``) and logged as a
    warning; anything else stays Tornado's ``500`` with the traceback logged."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info is not None and "error" not in kwargs:
            spec = describe(exc_info[1])
            if spec != INTERNAL:
                status_code = spec.status
                self.set_status(status_code)
                kwargs.update(error=spec.code, message=spec.message or str(exc_info[1]))
        super().write_error(status_code, **kwargs)

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        spec = describe(value) if value is not None else INTERNAL
        if spec == INTERNAL:
            super().log_exception(typ, value, tb)
            return
        log.warning("request failed", extra={"path": self.request.path, "error": spec.code,
                                             "reason": type(value).__name__})


class ApiHandler(EdgeJsonHandler):
    """A JSON endpoint for signed-in users: ``self.identity`` is set before any method runs.

    A request without a valid token is answered ``401`` with ``token_missing``,
    ``token_invalid``, ``token_expired`` or ``unknown_user``; one that changes state with
    only the cookie, ``403 cookie_not_accepted``.
    """

    identity: Identity

    def initialize(self, deps: EdgeDeps) -> None:
        self.deps = deps

    async def prepare(self) -> None:
        cookie = self.request.method in COOKIE_METHODS
        token = request_token(self, cookie=cookie)
        if token is None and not cookie and self.get_cookie(TOKEN_COOKIE):
            raise CookieNotAccepted(
                f"the {TOKEN_COOKIE} cookie does not authenticate {self.request.method}: "
                "send the token as Authorization: Bearer"
            )
        if token is None:
            places = "Bearer, ?token= or cookie" if cookie else "Bearer or ?token="
            self.fail(401, "token_missing", f"a token is required ({places})")
            return
        try:
            self.identity = await authenticate(self.deps, token)
        except TokenError as exc:
            self.fail(401, exc.code, exc.message)
        except SQLAlchemyError as exc:
            self.fail(*lookup_failed(exc))

    def may_see(self, owner: str) -> bool:
        """Whether the caller may see what ``owner`` owns: their own, or any as an admin."""
        return owner == self.identity.user_id or self.identity.has_role(
            self.deps.settings.auth.admin_role
        )
