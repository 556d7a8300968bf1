"""Fuzzed WebSocket input against a real edge.

Every text or binary frame is answered, in order, with ``ack`` or an ``error`` of a
documented code (never ``internal``), or the socket is closed with a documented close
code and a reason; a well-formed frame works after every example, and the edge stays
ready. Below the frame layer, any bytes at all after the upgrade may cost the sender
its socket, and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from services.ws_edge.frames import MAX_REF_LENGTH
from services.ws_edge.server import EdgeServer
from tests.hostile.strategies import text_frames
from tests.support.client import Client

MAX_FRAME_BYTES = 4096
FUZZ = settings(
    database=None, max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REPLY_TIMEOUT = 10.0
# Error codes a frame may get (docs/protocol.md 6.6), short of a broker outage.
FRAME_ERRORS = {
    "binary_frame", "invalid_json", "invalid_frame", "unknown_type", "invalid_address",
    "forbidden", "no_service",
}
# Closes a frame may cause (docs/protocol.md 8), with their reasons.
FRAME_CLOSES = {1009: "message too big", 4029: "too many invalid frames"}

oversized = st.integers(MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES + 2048).map(
    lambda n: '{"type": "message.send", "to": "user:fuzzer", "data": {"pad": "' + "x" * n + '"}}'
)
frames = st.lists(
    st.one_of(
        text_frames,
        text_frames.map(str.encode),  # the same, as binary frames
        st.binary(max_size=300),
        oversized,
    ),
    min_size=1,
    max_size=6,
)


class Session:
    """The fuzzing client's socket, opened again after the edge closes it."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.client: Client | None = None
        self.oversized = False  # whether the frames just sent included one over the limit

    async def open(self) -> Client:
        if self.client is None:
            self.client = await Client.connect(self.port, self.token)
        return self.client

    async def next_reply(self) -> dict[str, Any] | None:
        """The next ``ack`` or ``error`` (events are skipped); None once the edge closed."""
        assert self.client is not None
        while True:
            message = await asyncio.wait_for(self.client.connection.read_message(), REPLY_TIMEOUT)
            if message is None:
                return None
            frame = orjson.loads(message)
            if "v" not in frame:
                return dict(frame)

    def closed(self) -> None:
        """The edge closed the socket: check how, and open a new one next time."""
        assert self.client is not None
        connection, self.client = self.client.connection, None
        code, reason = connection.close_code, connection.close_reason
        if code is None and self.oversized:
            # Tornado sends 1009 and drops the connection at once, unread data and all:
            # the kernel answers that data with a reset, which can beat the close frame
            # to the client (docs/protocol.md 12).
            return
        assert code in FRAME_CLOSES, f"closed with {code} {reason!r}"
        assert reason == FRAME_CLOSES[code]


def wire_bytes(frame: str | bytes) -> bytes:
    return frame.encode() if isinstance(frame, str) else frame


def expected_ref(frame: str | bytes) -> object:
    """The ref the reply must carry (docs/protocol.md 6.1): the frame's, when readable."""
    if isinstance(frame, bytes):
        return None
    try:
        raw = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    ref = raw.get("ref") if isinstance(raw, dict) else None
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref
    return ref if isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH else None


@pytest.fixture
async def fuzz_edge(make_edge: Callable[..., EdgeServer]) -> EdgeServer:
    # No frame rate limit here: every frame is to reach the parser (the limit has tests
    # of its own). Invalid-frame strikes keep their default and close the socket often.
    edge = make_edge(WARREN_EDGE_MAX_FRAME_BYTES=str(MAX_FRAME_BYTES), WARREN_EDGE_FRAME_RATE="0")
    await edge.start()
    return edge


@pytest.fixture
def session(fuzz_edge: EdgeServer, token_for: Callable[..., str]) -> Session:
    return Session(fuzz_edge.port, token_for("fuzzer", ("team",)))


async def probe(session: Session) -> None:
    """A well-formed frame is acked and its event delivered (on a new socket if the
    last fuzzed frame had the edge close the old one)."""
    for _attempt in range(2):
        client = await session.open()
        try:
            ack = await client.request(
                {"type": "message.send", "ref": "probe", "to": "user:fuzzer", "data": {}}
            )
        except (ConnectionError, WebSocketClosedError):
            session.closed()
            continue
        assert ack["type"] == "ack", ack
        while (await client.recv())["id"] != ack["data"]["id"]:
            pass
        return
    raise AssertionError("a well-formed frame got no ack")


async def still_ready(edge: EdgeServer) -> None:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{edge.port}/readyz")
    assert response.code == 200
    internal = edge.metrics.registry.get_sample_value(
        "warren_edge_frames_refused_total", {"reason": "internal"}
    )
    assert not internal, "a frame failed inside the edge"


@FUZZ
@given(sent=frames)
async def test_every_frame_gets_an_answer_or_a_documented_close(
    fuzz_edge: EdgeServer, session: Session, sent: list[str | bytes]
) -> None:
    client = await session.open()
    session.oversized = any(len(wire_bytes(f)) > MAX_FRAME_BYTES for f in sent)
    written = []
    for frame in sent:
        try:
            await client.connection.write_message(frame, binary=isinstance(frame, bytes))
        except WebSocketClosedError:
            break
        written.append(frame)
    for frame in written:
        reply = await session.next_reply()
        if reply is None:
            session.closed()
            break
        assert reply["ref"] == expected_ref(frame), (frame, reply)
        if reply["type"] == "ack":
            assert isinstance(reply["data"]["id"], str)
            continue
        assert reply["type"] == "error", reply
        assert reply["data"]["code"] in FRAME_ERRORS, reply
        assert isinstance(reply["data"]["message"], str) and reply["data"]["message"]
    await probe(session)
    await still_ready(fuzz_edge)


# -- below the frame layer ---------------------------------------------------------


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """One client frame, masked as RFC 6455 requires (or not, when the fuzzer says so)."""
    head = (0x80 if fin else 0) | rsv << 4 | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", head, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", head, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", head, 0x80 | 127, length)
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


wire = st.lists(
    st.one_of(
        st.binary(max_size=64),  # raw bytes: broken headers, unmasked frames, anything
        st.builds(
            masked,
            st.integers(0, 15),  # every opcode, reserved ones included
            st.binary(max_size=200),
            fin=st.booleans(),
            rsv=st.integers(0, 7),
        ),
        st.builds(masked, st.just(1), st.binary(max_size=50)),  # text that may not be UTF-8
    ),
    min_size=1,
    max_size=5,
)


@FUZZ
@given(chunks=wire)
async def test_any_bytes_after_the_upgrade_cost_at_most_that_socket(
    fuzz_edge: EdgeServer, session: Session, token_for: Callable[..., str], chunks: list[bytes]
) -> None:
    client = await Client.connect(fuzz_edge.port, token_for("wire"))
    protocol = client.connection.protocol
    assert protocol is not None and protocol.stream is not None
    for chunk in chunks:
        try:
            await protocol.stream.write(chunk)
        except StreamClosedError:
            break  # the edge dropped it: that is allowed
    # Whatever the edge made of it, it answers the next client as before.
    await probe(session)
    await still_ready(fuzz_edge)
    client.close()
