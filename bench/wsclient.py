"""Raw WebSocket clients, cheap enough to run a thousand in one process.

Each client is an ``asyncio.Protocol`` that speaks just enough RFC 6455 for the
bench: it sends the upgrade request, parses unmasked server frames, answers pings
and closes, and masks what it sends. Two dialects sit on top:

* :class:`WarrenClient`: the edge's ``/ws``; ready on the ``welcome`` frame.
* :class:`EngineIOClient`: Engine.IO v4 over the ``websocket`` transport, Socket.IO v5
  on top: answers ``0`` (open) with ``40{auth}``, is ready on ``40``, answers ``2``
  pings with ``3`` and reads ``42[event, data]`` events.

Every event carries a Warren envelope dict (``ts`` and ``data.step``), which the
shared :class:`Recorder` counts per step and turns into a latency sample.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from array import array
import os
import socket
import struct
import time
from collections import Counter
from typing import Any, Final, cast

import orjson

from bench.stats import Histogram

OP_TEXT: Final = 0x1
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
NEVER: Final = 1 << 62


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.3)."""
    key = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    mask = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
    return header + key + masked


def upgrade_request(host: str, port: int, target: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class StepTally:
    """Deliveries of one bench step seen by this process.

    Latencies are only appended while the step runs (the driver shares the machine's
    cores with the server it measures); they are binned when the step is collected.
    """

    __slots__ = ("count", "expected", "first", "last", "latencies", "reached")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies = array("d")
        self.expected = NEVER
        self.reached = asyncio.Event()

    def add(self, now: float, latency: float) -> None:
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now
        self.latencies.append(latency)
        if self.count >= self.expected:
            self.reached.set()

    def histogram(self) -> Histogram:
        histogram = Histogram()
        for latency in self.latencies:
            histogram.add(latency)
        return histogram


class Recorder:
    """Counts every event by its ``data.step``; a collected step no longer counts."""

    def __init__(self) -> None:
        self._steps: dict[int, StepTally] = {}
        self._collected: set[int] = set()
        self.late = 0  # events of a step that was already collected
        self.foreign = 0  # events without a bench step

    def record(self, envelope: dict[str, Any], now: float) -> None:
        data = envelope.get("data")
        step = data.get("step") if isinstance(data, dict) else None
        if not isinstance(step, int):
            self.foreign += 1
            return
        tally = self._steps.get(step)
        if tally is None:
            if step in self._collected:
                self.late += 1
                return
            tally = self._steps[step] = StepTally()
        tally.add(now, now - envelope["ts"])

    async def collect(
        self, step: int, expected: int, deadline_s: float, stall_s: float
    ) -> StepTally:
        """Wait until ``expected`` deliveries of ``step`` arrived, nothing arrived for
        ``stall_s``, or ``deadline_s`` passed; then stop counting the step."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        tally = self._steps.setdefault(step, StepTally())
        tally.expected = expected
        if tally.count >= expected:
            tally.reached.set()
        seen = -1
        while not tally.reached.is_set() and tally.count != seen:
            seen = tally.count
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(tally.reached.wait(), min(stall_s, remaining))
            except TimeoutError:
                pass
        self._collected.add(step)
        return self._steps.pop(step)


class WsClient(asyncio.Protocol):
    """The RFC 6455 layer; subclasses say what a text frame means."""

    def __init__(self, request: bytes, recorder: Recorder, closes: Counter[int]) -> None:
        self._request = request
        self._recorder = recorder
        self._closes = closes
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._upgraded = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.open = False

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.open = False
            self._closes[-1] += 1  # lost without a close frame we saw first
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self._buffer + data if self._buffer else data
        if not self._upgraded:
            buffer = self._read_upgrade(buffer)
            if not self._upgraded:
                return
        self._buffer = self._read_frames(buffer, now)

    # -- frames -------------------------------------------------------------------

    def _read_upgrade(self, buffer: bytes) -> bytes:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self._buffer = buffer
            return b""
        status = buffer[: buffer.find(b"\r\n")]
        if not status.startswith(b"HTTP/1.1 101"):
            self._fail(ConnectionRefusedError(f"upgrade refused: {buffer[:300]!r}"))
            return b""
        self._upgraded = True
        return buffer[end + 4 :]

    def _read_frames(self, buffer: bytes, now: float) -> bytes:
        """Handle every complete frame in ``buffer``; return the incomplete rest."""
        size = len(buffer)
        pos = 0
        on_text = self.on_text
        while size - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            opcode = buffer[pos] & 0x0F
            pos = end
            if opcode == OP_TEXT:
                on_text(buffer[start:end], now)
            elif opcode == OP_PING:
                self.send(OP_PONG, buffer[start:end])
            elif opcode == OP_CLOSE:
                self._on_close_frame(buffer[start:end])
                return b""
        return buffer[pos:] if pos < size else b""

    def _on_close_frame(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        if self.open:
            self.open = False
            self._closes[code] += 1
        self.send(OP_CLOSE, payload[:2])
        if self._transport is not None:
            self._transport.close()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed with {code}: {payload[2:]!r}"))

    def send(self, opcode: int, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(client_frame(opcode, payload))

    def close(self) -> None:
        """Start a normal close; the server answers and drops the connection."""
        self.open = False
        self.send(OP_CLOSE, (1000).to_bytes(2, "big"))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def reset(self) -> None:
        """Drop the connection with a TCP reset, so that its port is free at once: a close
        from this side would hold the port in TIME_WAIT for a minute."""
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def _ready(self) -> None:
        self.open = True
        if not self.ready.done():
            self.ready.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    def on_text(self, payload: bytes, now: float) -> None:
        raise NotImplementedError


class WarrenClient(WsClient):
    """A client of the edge's ``/ws``: the first frame is ``welcome``, then envelopes."""

    @classmethod
    def make(cls, port: int, token: str, recorder: Recorder, closes: Counter[int]) -> WarrenClient:
        return cls(upgrade_request("127.0.0.1", port, f"/ws?token={token}"), recorder, closes)

    def on_text(self, payload: bytes, now: float) -> None:
        if self.open:
            self._recorder.record(orjson.loads(payload), now)
            return
        frame = orjson.loads(payload)
        if frame.get("type") == "welcome":
            self._ready()
        else:
            self._fail(ConnectionRefusedError(f"expected welcome, got {frame!r}"))


class EngineIOClient(WsClient):
    """A Socket.IO v5 client over Engine.IO v4's websocket transport, namespace ``/``."""

    def __init__(
        self, request: bytes, recorder: Recorder, closes: Counter[int], auth: dict[str, Any]
    ) -> None:
        super().__init__(request, recorder, closes)
        self._auth = orjson.dumps(auth)

    @classmethod
    def make(
        cls, port: int, token: str, recorder: Recorder, closes: Counter[int]
    ) -> EngineIOClient:
        target = "/socket.io/?EIO=4&transport=websocket"
        return cls(upgrade_request("127.0.0.1", port, target), recorder, closes, {"token": token})

    def on_text(self, payload: bytes, now: float) -> None:
        if payload[:2] == b"42":  # Socket.IO EVENT: ["event", data]
            self._recorder.record(orjson.loads(payload[2:])[1], now)
        elif payload == b"2":  # Engine.IO ping
            self.send(OP_TEXT, b"3")
        elif payload[:1] == b"0":  # Engine.IO open: connect to namespace "/"
            self.send(OP_TEXT, b"40" + self._auth)
        elif payload[:2] == b"40":  # Socket.IO CONNECT accepted
            self._ready()
        elif payload[:2] == b"44":  # Socket.IO CONNECT_ERROR
            self._fail(ConnectionRefusedError(f"connect refused: {payload!r}"))
