"""The one broker envelope: encoding, decoding and what decoding refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.messaging.envelope import (
    MAX_ID_LENGTH,
    SCHEMA_VERSION,
    Envelope,
    EnvelopeError,
    decode,
    encode,
    from_dict,
    new_id,
)
from shared.messaging.names import ADDRESS_BROADCAST, Address

PROPERTY = settings(database=None, max_examples=300, deadline=None)


def valid_raw(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "v": 1,
        "id": "abc123",
        "type": "message",
        "ts": 1700000000.5,
        "to": "user:bob",
        "from": "user:alice",
        "data": {"text": "hi"},
    }
    raw.update(overrides)
    return raw


def body(raw: object) -> bytes:
    return orjson.dumps(raw)


# --- round trip -----------------------------------------------------------------------


def test_schema_version_is_one() -> None:
    assert SCHEMA_VERSION == 1


def test_encode_produces_the_documented_fields() -> None:
    envelope = Envelope(
        type="message",
        to=Address.group("ops"),
        sender=Address.service("chat"),
        data={"n": 1},
        id="id-1",
        ts=12.5,
    )
    assert orjson.loads(encode(envelope)) == {
        "v": 1,
        "id": "id-1",
        "type": "message",
        "ts": 12.5,
        "to": "group:ops",
        "from": "service:chat",
        "data": {"n": 1},
    }


def test_encode_decode_round_trip() -> None:
    envelope = Envelope(
        type="chat.ask",
        to=ADDRESS_BROADCAST,
        sender=Address.user("alice"),
        data={"text": "héllo", "nested": {"list": [1, 2.5, None, True]}},
    )
    assert decode(encode(envelope)) == envelope


def test_decode_accepts_str() -> None:
    assert decode(body(valid_raw()).decode()) == decode(body(valid_raw()))


def test_decoded_fields() -> None:
    envelope = decode(body(valid_raw()))
    assert envelope.type == "message"
    assert envelope.to == Address.user("bob")
    assert envelope.sender == Address.user("alice")
    assert envelope.data == {"text": "hi"}
    assert envelope.id == "abc123"
    assert envelope.ts == 1700000000.5


def test_integer_ts_becomes_float() -> None:
    envelope = decode(body(valid_raw(ts=17)))
    assert envelope.ts == 17.0
    assert isinstance(envelope.ts, float)


def test_defaults_give_a_fresh_id_and_current_time() -> None:
    a = Envelope(type="m", to=ADDRESS_BROADCAST, sender=Address.user("a"), data={})
    b = Envelope(type="m", to=ADDRESS_BROADCAST, sender=Address.user("a"), data={})
    assert a.id != b.id
    assert len(a.id) == 32
    assert a.ts > 1_600_000_000


def test_new_id_is_hex() -> None:
    value = new_id()
    assert len(value) == 32
    int(value, 16)


def test_id_of_max_length_is_accepted() -> None:
    assert decode(body(valid_raw(id="x" * MAX_ID_LENGTH))).id == "x" * MAX_ID_LENGTH


def test_extra_fields_are_ignored() -> None:
    assert decode(body(valid_raw(extra="x"))).id == "abc123"


names = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
    min_size=1,
    max_size=64,
)
destinations = st.one_of(
    st.just(ADDRESS_BROADCAST), st.builds(Address.user, names), st.builds(Address.group, names)
)
senders = st.one_of(st.builds(Address.user, names), st.builds(Address.service, names))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
types = st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,3}", fullmatch=True)


@PROPERTY
@given(
    types,
    destinations,
    senders,
    st.dictionaries(st.text(), json_values, max_size=5),
    st.text(min_size=1, max_size=MAX_ID_LENGTH),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_round_trip_property(
    kind: str, to: Address, sender: Address, data: dict[str, Any], envelope_id: str, ts: float
) -> None:
    envelope = Envelope(type=kind, to=to, sender=sender, data=data, id=envelope_id, ts=ts)
    assert decode(encode(envelope)) == envelope


# --- rejections -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b"\xff\xfe", b"NaN", b"{'v': 1}", "\ud800"],
)
def test_decode_rejects_non_json(raw: bytes | str) -> None:
    with pytest.raises(EnvelopeError):
        decode(raw)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"x"', b"null", b"true", b"[{}]"])
def test_decode_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(EnvelopeError, match="object"):
        decode(raw)


@pytest.mark.parametrize("version", [True, False, 0, 2, -1, "1", None, [1], {"v": 1}, 1.5])
def test_decode_rejects_wrong_version(version: object) -> None:
    with pytest.raises(EnvelopeError, match="version"):
        decode(body(valid_raw(v=version)))


def test_decode_rejects_missing_version() -> None:
    raw = valid_raw()
    del raw["v"]
    with pytest.raises(EnvelopeError, match="version"):
        decode(body(raw))


@pytest.mark.parametrize("envelope_id", ["", "x" * (MAX_ID_LENGTH + 1), 1, None, True, ["a"]])
def test_decode_rejects_bad_id(envelope_id: object) -> None:
    with pytest.raises(EnvelopeError, match="id"):
        decode(body(valid_raw(id=envelope_id)))


def test_decode_rejects_missing_id() -> None:
    raw = valid_raw()
    del raw["id"]
    with pytest.raises(EnvelopeError, match="id"):
        decode(body(raw))


@pytest.mark.parametrize("ts", [True, False, None, "1700000000", [1], {}])
def test_decode_rejects_bad_ts(ts: object) -> None:
    with pytest.raises(EnvelopeError, match="ts"):
        decode(body(valid_raw(ts=ts)))


@pytest.mark.parametrize("ts", [math.inf, -math.inf, math.nan])
def test_from_dict_rejects_non_finite_ts(ts: float) -> None:
    # JSON cannot carry these, but from_dict is also called on already-parsed objects.
    with pytest.raises(EnvelopeError, match="ts"):
        from_dict(valid_raw(ts=ts))


def test_decode_rejects_overflowing_ts() -> None:
    with pytest.raises(EnvelopeError):
        decode(b'{"v":1,"id":"a","type":"m","ts":1e400,"to":"broadcast","from":"user:a","data":{}}')


@pytest.mark.parametrize("data", [None, [], "x", 1, True])
def test_decode_rejects_data_that_is_not_an_object(data: object) -> None:
    with pytest.raises(EnvelopeError, match="data"):
        decode(body(valid_raw(data=data)))


def test_decode_rejects_missing_data() -> None:
    raw = valid_raw()
    del raw["data"]
    with pytest.raises(EnvelopeError, match="data"):
        decode(body(raw))


@pytest.mark.parametrize(
    "to", ["service:chat", "user:a.b", "group:*", "group:#", "", "bob", None, 1, "broadcast:x"]
)
def test_decode_rejects_bad_destination(to: object) -> None:
    with pytest.raises(EnvelopeError):
        decode(body(valid_raw(to=to)))


@pytest.mark.parametrize("sender", ["group:ops", "broadcast", "user:", "user:a b", None, 5])
def test_decode_rejects_bad_sender(sender: object) -> None:
    with pytest.raises(EnvelopeError):
        decode(body(valid_raw(**{"from": sender})))


@pytest.mark.parametrize("kind", ["", "Message", "a..b", "a.", "1a", None, 1, "a" * 65, "a.*"])
def test_decode_rejects_bad_type(kind: object) -> None:
    with pytest.raises(EnvelopeError):
        decode(body(valid_raw(type=kind)))


def test_envelope_error_is_a_value_error() -> None:
    assert issubclass(EnvelopeError, ValueError)


# --- fuzz -----------------------------------------------------------------------------


def _decodes_or_refuses(raw: bytes | str) -> None:
    try:
        result = decode(raw)
    except EnvelopeError:
        return
    assert isinstance(result, Envelope)


@PROPERTY
@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_never_raises_anything_else(raw: bytes) -> None:
    _decodes_or_refuses(raw)


@PROPERTY
@given(st.text(max_size=200))
def test_decode_of_arbitrary_text_never_raises_anything_else(raw: str) -> None:
    _decodes_or_refuses(raw)


any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


def _json_text(value: object) -> str:
    return json.dumps(value)


@PROPERTY
@given(any_json)
def test_decode_of_arbitrary_json_never_raises_anything_else(value: object) -> None:
    _decodes_or_refuses(_json_text(value))


field_values = st.one_of(
    any_json,
    st.sampled_from(
        ["user:a", "group:g", "broadcast", "service:s", "message", "a.b", 1, 1.0, True, "1"]
    ),
)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {},
        optional={
            k: field_values for k in ("v", "id", "type", "ts", "to", "from", "data")
        },
    )
)
def test_decode_of_envelope_shaped_json_never_raises_anything_else(raw: dict[str, Any]) -> None:
    _decodes_or_refuses(_json_text(raw))
