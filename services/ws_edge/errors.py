"""The edge's one error table: exception -> HTTP status and stable ``error`` code,
and the WebSocket close codes it uses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from shared.auth import TokenError
from shared.db.outage import database_unavailable
from shared.messaging import AddressError
from shared.messaging.broker import BrokerUnavailable, Unroutable
from services.ws_edge.frame_rate import FramesThrottled
from services.ws_edge.login_limits import LoginThrottled
from services.ws_edge.history import HistoryBusy, HistoryUnavailable
from services.ws_edge.policy import PolicyDenied
from services.ws_edge.publishing import (
    BadBody,
    BatchError,
    BodyTooLarge,
    EventError,
    PublishThrottled,
)
from services.ws_edge.service_keys import KeyForbidden, KeyRefused


class CloseCode(IntEnum):
    GOING_AWAY = 1001  # the edge is shutting down; reconnect to another one
    MESSAGE_TOO_BIG = 1009  # an inbound frame exceeded WARREN_EDGE_MAX_FRAME_BYTES
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the broker is unavailable; reconnect with backoff
    TOKEN_EXPIRED = 4001  # the token's exp passed during the connection
    SLOW_CONSUMER = 4008  # the client stopped reading; its outbound buffer filled
    TOO_MANY_INVALID_FRAMES = 4029  # repeated invalid frames
    TOO_MANY_FRAMES = 4030  # frames kept coming faster than WARREN_EDGE_FRAME_RATE


class FrameError(ValueError):
    """A client frame the edge cannot accept."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TooManySockets(Exception):
    """The user already holds ``WARREN_EDGE_MAX_SOCKETS_PER_USER`` sockets on this edge."""


class Overloaded(Exception):
    """The edge cannot take this socket now; the client retries shortly."""


class BadRequest(ValueError):
    """An HTTP body that is not what the endpoint takes."""


class InvalidCredentials(PermissionError):
    pass


class CookieNotAccepted(PermissionError):
    """A state-changing request whose only credential is the token cookie, which a
    browser also sends with a page's cross-site form (handlers/api.py)."""


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    status: int
    code: str
    # What the client is told instead of the exception's own text, where that would show
    # internals (a database error's text holds the statement and the server's address).
    message: str | None = None


ERROR_TABLE: dict[type[Exception], ErrorSpec] = {
    BadRequest: ErrorSpec(400, "bad_request"),
    FrameError: ErrorSpec(400, "invalid_frame"),
    AddressError: ErrorSpec(400, "invalid_address"),
    InvalidCredentials: ErrorSpec(401, "invalid_credentials"),
    TokenError: ErrorSpec(401, "token_invalid"),
    PolicyDenied: ErrorSpec(403, "forbidden"),
    CookieNotAccepted: ErrorSpec(403, "cookie_not_accepted"),
    # Publishing over HTTP (docs/protocol.md 15); each of these carries its own code.
    BadBody: ErrorSpec(400, "bad_request"),
    EventError: ErrorSpec(400, "invalid_event"),
    BatchError: ErrorSpec(400, "invalid_batch"),
    KeyRefused: ErrorSpec(401, "key_invalid"),
    KeyForbidden: ErrorSpec(403, "forbidden"),
    BodyTooLarge: ErrorSpec(413, "body_too_large"),
    PublishThrottled: ErrorSpec(429, "rate_limited"),
    LoginThrottled: ErrorSpec(429, "rate_limited"),
    FramesThrottled: ErrorSpec(429, "rate_limited"),
    TooManySockets: ErrorSpec(429, "too_many_sockets"),
    Overloaded: ErrorSpec(503, "overloaded"),
    Unroutable: ErrorSpec(503, "no_service"),
    BrokerUnavailable: ErrorSpec(503, "unavailable"),
    HistoryUnavailable: ErrorSpec(503, "unavailable"),
    HistoryBusy: ErrorSpec(429, "rate_limited"),
}

INTERNAL = ErrorSpec(500, "internal")
DATABASE_UNAVAILABLE = ErrorSpec(
    503, "database_unavailable", "the database is unavailable; retry later"
)


def describe(exc: BaseException) -> ErrorSpec:
    """The status and code for ``exc``; exceptions carrying their own code keep it.

    The database being away (``shared.db.outage``) is ``database_unavailable``, whichever
    of SQLAlchemy's exceptions says so: it is told by the error, not only by its type.
    """
    if database_unavailable(exc):
        return DATABASE_UNAVAILABLE
    for kind in type(exc).__mro__:
        spec = ERROR_TABLE.get(kind)
        if spec is not None:
            own = getattr(exc, "code", None)
            return ErrorSpec(spec.status, own) if isinstance(own, str) else spec
    return INTERNAL
