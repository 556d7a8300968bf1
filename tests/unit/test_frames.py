"""Client frames in, server frames out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ws_edge.errors import FrameError
from services.ws_edge.frames import (
    MAX_REF_LENGTH,
    MESSAGE_SEND,
    ClientFrame,
    Recovered,
    ack,
    error,
    parse_client_frame,
    ref_of,
    refresh_token,
    replay_done,
    welcome,
)

PROPERTY = settings(database=None, max_examples=300, deadline=None)
# The types an edge knows at some moment: its own and those the catalogue holds.
KNOWN = frozenset({"message.send", "auth.refresh", "chat.ask", "run.start", "run.stop",
                   "excel.create"})


def text(raw: object) -> str:
    return orjson.dumps(raw).decode()


def code_of(frame: str) -> str:
    with pytest.raises(FrameError) as info:
        parse_client_frame(frame, KNOWN)
    return info.value.code


# --- accepted -------------------------------------------------------------------------


def test_a_type_is_known_only_when_given() -> None:
    assert parse_client_frame(text({"type": "orders.create"}), {"orders.create"}).type == (
        "orders.create"
    )
    assert code_of(text({"type": "orders.create"})) == "unknown_type"


def test_parse_message_send() -> None:
    frame = parse_client_frame(
        text({"type": "message.send", "ref": "r1", "to": "user:bob", "data": {"text": "hi"}}),
        KNOWN,
    )
    assert frame == ClientFrame(type=MESSAGE_SEND, ref="r1", to="user:bob", data={"text": "hi"})


@pytest.mark.parametrize("kind", sorted(KNOWN))
def test_every_client_type_is_accepted(kind: str) -> None:
    assert parse_client_frame(text({"type": kind}), KNOWN).type == kind


def test_optional_fields_default() -> None:
    frame = parse_client_frame('{"type": "chat.ask"}', KNOWN)
    assert frame == ClientFrame(type="chat.ask", ref=None, to=None, data={})


@pytest.mark.parametrize("ref", [None, 0, -1, 7, 2**63 - 1, "", "abc", "x" * MAX_REF_LENGTH])
def test_valid_refs_are_kept(ref: object) -> None:
    assert parse_client_frame(text({"type": "chat.ask", "ref": ref}), KNOWN).ref == ref


def test_to_is_passed_through_unparsed() -> None:
    # Address validation happens later (AddressError -> invalid_address).
    assert parse_client_frame(text({"type": "message.send", "to": 5}), KNOWN).to == 5


def test_extra_fields_are_ignored() -> None:
    assert parse_client_frame(text({"type": "chat.ask", "x": 1}), KNOWN).type == "chat.ask"


# --- refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame", ["", "{", "not json", "{'type': 'x'}", "NaN", '{"type": "chat.ask"}x']
)
def test_invalid_json(frame: str) -> None:
    assert code_of(frame) == "invalid_json"


@pytest.mark.parametrize(
    "frame", ["[]", "1", '"message.send"', "null", "true", '[{"type": "chat.ask"}]']
)
def test_non_object(frame: str) -> None:
    assert code_of(frame) == "invalid_frame"


@pytest.mark.parametrize("ref", [True, False, 1.5, 1.0, "x" * (MAX_REF_LENGTH + 1), [], {}, ["a"]])
def test_bad_ref(ref: object) -> None:
    assert code_of(text({"type": "chat.ask", "ref": ref})) == "invalid_frame"


@pytest.mark.parametrize("kind", [None, 1, True, ["chat.ask"], {"name": "chat.ask"}])
def test_non_string_type(kind: object) -> None:
    assert code_of(text({"type": kind})) == "invalid_frame"


def test_missing_type() -> None:
    assert code_of(text({"ref": 1})) == "invalid_frame"


@pytest.mark.parametrize(
    "kind", ["", "message", "Message.send", "chat.ask ", "welcome", "ack", "x" * 1000]
)
def test_unknown_type(kind: str) -> None:
    assert code_of(text({"type": kind})) == "unknown_type"


def test_unknown_type_message_is_truncated() -> None:
    with pytest.raises(FrameError) as info:
        parse_client_frame(text({"type": "y" * 1000}), KNOWN)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("data", [None, [], "x", 1, True])
def test_data_not_an_object(data: object) -> None:
    assert code_of(text({"type": "chat.ask", "data": data})) == "invalid_frame"


def test_bad_ref_is_reported_before_bad_type() -> None:
    assert code_of(text({"type": "nope", "ref": True})) == "invalid_frame"


def test_frame_error_is_a_value_error_with_code() -> None:
    exc = FrameError("invalid_json", "msg")
    assert isinstance(exc, ValueError)
    assert exc.code == "invalid_json"
    assert str(exc) == "msg"


@PROPERTY
@given(st.text(max_size=200))
def test_parse_of_arbitrary_text_raises_only_frame_error(frame: str) -> None:
    try:
        result = parse_client_frame(frame, KNOWN)
    except FrameError as exc:
        assert exc.code in {"invalid_json", "invalid_frame", "unknown_type"}
    else:
        assert isinstance(result, ClientFrame)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(st.sampled_from(sorted(KNOWN)), json_values),
            "ref": json_values,
            "to": json_values,
            "data": json_values,
        },
    )
)
def test_parse_of_frame_shaped_json_raises_only_frame_error(raw: dict[str, Any]) -> None:
    try:
        parse_client_frame(text(raw), KNOWN)
    except FrameError:
        pass


# --- auth.refresh ---------------------------------------------------------------------


def test_refresh_token_is_read_from_data() -> None:
    frame = parse_client_frame(text({"type": "auth.refresh", "data": {"token": "a.b.c"}}), KNOWN)
    assert refresh_token(frame) == "a.b.c"


@pytest.mark.parametrize("data", [{}, {"token": ""}, {"token": 5}, {"token": None},
                                  {"token": ["a.b.c"]}])
def test_refresh_without_a_token_string_is_an_invalid_frame(data: dict[str, Any]) -> None:
    frame = parse_client_frame(text({"type": "auth.refresh", "data": data}), KNOWN)
    with pytest.raises(FrameError) as info:
        refresh_token(frame)
    assert info.value.code == "invalid_frame"


# --- ref_of ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "ref"),
    [
        ('{"ref": "r1", "type": 5}', "r1"),
        ('{"ref": 9, "data": []}', 9),
        ('{"ref": true}', None),
        ('{"ref": 1.5}', None),
        (text({"ref": "x" * (MAX_REF_LENGTH + 1)}), None),
        ('{"type": "chat.ask"}', None),
        ("[1]", None),
        ('"r1"', None),
        ("not json", None),
        ("", None),
    ],
)
def test_ref_of(frame: str, ref: object) -> None:
    assert ref_of(frame) == ref


# --- server frames --------------------------------------------------------------------


def test_welcome() -> None:
    assert orjson.loads(
        welcome("alice", ("ops", "dev"), ("admin",), "edge-1", position=12.5, window_s=2.0)
    ) == {
        "type": "welcome",
        "data": {"user": "alice", "groups": ["ops", "dev"], "roles": ["admin"], "edge": "edge-1",
                 "position": 12.5, "window": 2.0},
    }


def test_welcome_after_a_recovery() -> None:
    recovered = welcome("a", (), (), "e", position=1.0, window_s=2.0,
                        recovery=Recovered(recovered=True))
    assert orjson.loads(recovered)["data"]["recovered"] is True
    assert "reason" not in orjson.loads(recovered)["data"]
    refused = orjson.loads(welcome("a", (), (), "e", position=1.0, window_s=2.0,
                                   recovery=Recovered(False, "too_old", 0.5)))["data"]
    assert (refused["recovered"], refused["reason"], refused["oldest"]) == (False, "too_old", 0.5)


def test_replay_done() -> None:
    assert orjson.loads(replay_done(3, 9.5)) == {
        "type": "replay.done", "data": {"events": 3, "position": 9.5}
    }


def test_ack_without_data() -> None:
    assert orjson.loads(ack("r1")) == {"type": "ack", "ref": "r1", "data": {}}


def test_ack_with_data() -> None:
    assert orjson.loads(ack(3, {"id": "m1"})) == {"type": "ack", "ref": 3, "data": {"id": "m1"}}


def test_ack_with_null_ref() -> None:
    assert orjson.loads(ack(None)) == {"type": "ack", "ref": None, "data": {}}


def test_error() -> None:
    assert orjson.loads(error("r1", "forbidden", "no")) == {
        "type": "error",
        "ref": "r1",
        "data": {"code": "forbidden", "message": "no"},
    }


def test_server_frames_are_bytes() -> None:
    assert isinstance(welcome("a", (), (), "e", position=0.0, window_s=2.0), bytes)
    assert isinstance(ack(None), bytes)
    assert isinstance(error(None, "c", "m"), bytes)
