"""The edge's error table."""

from __future__ import annotations

import pytest

from services.ws_edge.errors import (
    ERROR_TABLE,
    INTERNAL,
    BadRequest,
    CloseCode,
    ErrorSpec,
    FrameError,
    InvalidCredentials,
    describe,
)
from services.ws_edge.policy import PolicyDenied
from services.ws_edge.publishing import (
    BadBody,
    BatchError,
    BodyTooLarge,
    EventError,
    PublishThrottled,
)
from services.ws_edge.service_keys import KeyForbidden, KeyRefused
from shared.auth import TokenError
from shared.messaging import AddressError
from shared.messaging.broker import BrokerUnavailable, Unroutable


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (BadRequest("x"), 400, "bad_request"),
        (AddressError("x"), 400, "invalid_address"),
        (InvalidCredentials("x"), 401, "invalid_credentials"),
        (PolicyDenied("x"), 403, "forbidden"),
        (Unroutable("x"), 503, "no_service"),
        (BrokerUnavailable("x"), 503, "unavailable"),
    ],
)
def test_table_entries(exc: Exception, status: int, code: str) -> None:
    assert describe(exc) == ErrorSpec(status, code)


# The arguments of the entries that take more than a message.
ARGUMENTS: dict[type[Exception], tuple[object, ...]] = {
    TokenError: ("code", "message"),
    FrameError: ("code", "message"),
    KeyRefused: ("code", "message"),
    KeyForbidden: ("code", "message"),
    EventError: ("code", "field", "message"),
    BadBody: ("code", "field", "message"),
    BatchError: ([], 0),
    BodyTooLarge: (1024,),
    PublishThrottled: (1,),
}


@pytest.mark.parametrize("kind", list(ERROR_TABLE))
def test_every_table_entry_is_described_with_its_status(kind: type[Exception]) -> None:
    exc = kind(*ARGUMENTS.get(kind, ("message",)))
    assert describe(exc).status == ERROR_TABLE[kind].status


@pytest.mark.parametrize("kind", list(ERROR_TABLE))
def test_subclasses_map_like_their_base(kind: type[Exception]) -> None:
    sub = type("Sub", (kind,), {})
    exc = sub(*ARGUMENTS.get(kind, ("message",)))
    assert describe(exc).status == ERROR_TABLE[kind].status


def test_subclass_of_bad_request_keeps_bad_request() -> None:
    class EmptyBody(BadRequest):
        pass

    assert describe(EmptyBody("x")) == ErrorSpec(400, "bad_request")


def test_token_error_keeps_its_code() -> None:
    assert describe(TokenError("token_expired", "x")) == ErrorSpec(401, "token_expired")
    assert describe(TokenError("token_invalid", "x")) == ErrorSpec(401, "token_invalid")


def test_frame_error_keeps_its_code() -> None:
    assert describe(FrameError("unknown_type", "x")) == ErrorSpec(400, "unknown_type")
    assert describe(FrameError("invalid_json", "x")) == ErrorSpec(400, "invalid_json")


@pytest.mark.parametrize(
    "exc",
    [
        Exception("x"),
        RuntimeError("x"),
        ValueError("x"),
        PermissionError("x"),
        ConnectionError("x"),
        LookupError("x"),
        KeyError("x"),
        KeyboardInterrupt(),
    ],
)
def test_unknown_exceptions_are_internal(exc: BaseException) -> None:
    assert describe(exc) == INTERNAL
    assert INTERNAL == ErrorSpec(500, "internal")


def test_unknown_exception_with_a_code_attribute_is_still_internal() -> None:
    exc = RuntimeError("x")
    exc.code = "leaked"  # type: ignore[attr-defined]
    assert describe(exc) == INTERNAL


def test_non_string_code_falls_back_to_the_table() -> None:
    exc = BadRequest("x")
    exc.code = 42  # type: ignore[attr-defined]
    assert describe(exc) == ErrorSpec(400, "bad_request")


def test_close_codes() -> None:
    assert CloseCode.GOING_AWAY.value == 1001
    assert CloseCode.MESSAGE_TOO_BIG.value == 1009
    assert CloseCode.INTERNAL_ERROR.value == 1011
    assert CloseCode.TRY_AGAIN_LATER.value == 1013
    assert CloseCode.TOKEN_EXPIRED.value == 4001
    assert CloseCode.SLOW_CONSUMER.value == 4008
    assert CloseCode.TOO_MANY_INVALID_FRAMES.value == 4029
