"""Hypothesis strategies for hostile input: JSON as careless or malicious clients write
it, text that is almost JSON, and the shapes Warren's frames and commands take, filled
with the wrong things."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st


def _nested(leaves: st.SearchStrategy[Any], max_leaves: int) -> st.SearchStrategy[Any]:
    """``leaves``, and lists and objects of them nested a few levels deep."""
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def _scalars(bound: int, floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(-bound, bound), floats,
                     st.text(max_size=40))


# Scalars, including what JSON parsers disagree on: integers past 64 bits, NaN and
# infinities (not JSON at all once written), and any unicode.
scalars = _scalars(2**70, st.floats())
json_values = _nested(scalars, max_leaves=16)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
# Valid JSON once written, with integers of any size.
finite_values = _nested(_scalars(2**70, st.floats(allow_nan=False, allow_infinity=False)), 12)
# What every JSON parser reads the same way.
plain_values = _nested(_scalars(2**53, st.floats(allow_nan=False, allow_infinity=False)), 12)
plain_objects = st.dictionaries(st.text(max_size=8), plain_values, max_size=5)
not_objects = st.one_of(scalars, st.lists(json_values, max_size=3))
not_strings = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)


def dumps(value: Any) -> str:
    """JSON as other clients write it: any integer, NaN and Infinity pass through."""
    return json.dumps(value, ensure_ascii=False)


# Text that is not JSON, or JSON that parsers refuse: deep nesting, lone surrogates,
# numbers out of range, truncation, NUL bytes.
almost_json = st.one_of(
    st.text(max_size=200),
    st.sampled_from([
        "", " ", "null", "{", "}", "[]", '{"type":', '"\\ud800"', '{"ref": "\\udfff"}',
        '{"ts": 1e999}', "NaN", "\x00", '{"type": "message.send"}\x00', "{'type': 'x'}",
        '{"type": "message.send", "type": "run.start"}', "\ufeff{}",
    ]),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
)

# Each field is mostly plausible, so that frames get past the first check and reach the
# later ones, and sometimes anything at all.
ADDRESSES = st.one_of(
    st.sampled_from(["user:fuzzer", "user:other", "group:team", "group:elsewhere", "broadcast"]),
    st.sampled_from([
        "service:cat", "user:", "user:a.b", "user:*", "group:#", "broadcast:x", "",
        "user:" + "a" * 65, "USER:fuzzer", " user:fuzzer", "user:fuzzer\n", "group:team:x",
    ]),
    st.text(max_size=30),
    json_values,
)
FRAME_TYPES = ("message.send", "chat.ask", "run.start", "run.stop", "excel.create")
REFS = st.one_of(
    st.none(),
    st.integers(-1000, 1000),
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(min_size=120, max_size=140),
    json_values,
)


def frame_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """Client frames: plausible ones with wrong details, anything-goes ones, stray fields."""
    optional = {
        "to": ADDRESSES,
        "data": st.one_of(plain_objects, plain_objects, json_objects, not_objects),
        "from": st.sampled_from(["user:admin", "service:runner", "broadcast"]),
    }
    plausible = st.fixed_dictionaries(
        {"type": st.sampled_from(FRAME_TYPES),
         "ref": st.one_of(st.integers(0, 1000), st.text(max_size=20))},
        optional=optional,
    )
    anything = st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(
                st.sampled_from(FRAME_TYPES),
                st.sampled_from(["ack", "error", "welcome", "subscribe", "Message.Send", ""]),
                json_values,
            ),
            "ref": REFS,
            **optional,
        },
    )
    extra = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
    return st.builds(lambda f, e: {**e, **f}, st.one_of(plausible, anything), extra)


text_frames = st.one_of(
    frame_dicts().map(dumps), frame_dicts().map(dumps), almost_json, json_values.map(dumps)
)


# -- the data of commands and requests --------------------------------------------


def mostly(
    likely: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``likely`` three times in four: enough plausible data to get past the first check."""
    return st.one_of(likely, likely, likely, anything)


ints = mostly(st.integers(-3, 60), st.one_of(st.integers(-(2**70), 2**70), plain_values))
numbers = mostly(st.floats(-1, 2, allow_nan=False), st.one_of(st.integers(-1, 3), plain_values))
RUN_ARGS = st.fixed_dictionaries({}, optional={
    "start": ints, "interval_s": numbers, "count": ints, "width": ints, "rate": numbers,
    "stream": st.sampled_from(["stdout", "stderr", "x"]), "via": st.text(max_size=10),
    "stamp": plain_values, "limit": ints, "progress_steps": ints,
})
EXPORT_PARAMS = st.one_of(
    st.fixed_dictionaries({}, optional={
        "rows": ints, "limit": ints, "status": plain_values, "sources": plain_values,
    }),
    st.fixed_dictionaries({}, optional={
        "title": mostly(st.text(max_size=20), plain_values),
        "columns": st.lists(st.fixed_dictionaries({
            "name": mostly(st.text(max_size=10), plain_values),
            "type": st.sampled_from(
                ["string", "integer", "number", "date", "datetime", "boolean", "vector"]
            ),
        }), max_size=3),
        "rows": st.lists(st.lists(plain_values, max_size=3), max_size=4),
    }),
)
