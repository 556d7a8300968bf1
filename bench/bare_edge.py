"""``python -m bench.bare_edge``: issue 19's reference B, the bare edge.

The least an edge can do and still do Warren's job: a Tornado WebSocket server and an
aio-pika consumer of its own exclusive queue on ``warren.edges``, on uvloop like the
edge. A client connects as to the edge (``GET /ws?token=<jwt>``); the user and groups
are read from the token's claims without checking its signature (no auth: the cheapest
way to learn the user, as the edge would); its routing keys (``user.<id>``,
``group.<name>``; ``broadcast`` is bound at start) are bound once per key, counted by
holder and unbound after the last, and then it gets ``{"type": "welcome"}``. Each
message's body is made into one text frame, once, and written as it is to every socket
holding the message's routing key. No validation, no metrics, no pings, no recovery.

Acknowledgements are grouped as the edge groups them (one ``basic.ack multiple`` every
half prefetch window, or 10 ms after the first unacknowledged write), so the drain
compares the work per message, not the ack policy.

It logs one JSON line ``{"message": "bare edge ready", "port": N}`` on stdout when it
listens, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import logging
import signal
import sys
from collections.abc import Iterable
from typing import Any, Final

import aio_pika
import aiormq.abc
import orjson
import tornado.httpserver
import tornado.web
import tornado.websocket
import uvloop
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

from shared.locks import KeyedLocks
from shared.messaging import BROADCAST, group_key, user_key
from shared.messaging.broker import declare_edge_exchange, declare_exchanges
from shared.messaging.names import EDGE_EXCHANGE, AddressError

log = logging.getLogger("bench.bare_edge")

READY: Final = "bare edge ready"
ACK_DELAY_S: Final = 0.01
PREFETCH: Final = 512  # the edge's default (WARREN_EDGE_PREFETCH)
WELCOME: Final = b'{"type":"welcome"}'


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked server text frame (RFC 6455 5.2) around ``payload``."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def token_keys(token: str) -> tuple[str, ...]:
    """The routing keys of the user a JWT names (its ``sub`` and ``groups`` claims),
    read without checking the signature. :class:`ValueError` if it cannot be read."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        user, groups = claims["sub"], claims.get("groups", [])
        if not isinstance(groups, list):
            raise ValueError("groups is not a list")
        return (user_key(user), *(group_key(g) for g in groups))
    except (IndexError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError,
            AddressError) as exc:
        raise ValueError(f"unreadable token: {exc}") from exc


class GroupedAck:
    """Acknowledges written messages together: one ``multiple`` ack covers every message
    delivered before the last one written (the consumer handles them in order)."""

    def __init__(self, prefetch: int) -> None:
        self._half = max(1, prefetch // 2)
        self._last: AbstractIncomingMessage | None = None
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def done(self, message: AbstractIncomingMessage) -> None:
        self._last = message
        self._count += 1
        if self._count >= self._half:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        last, self._last, self._count = self._last, None, 0
        if last is not None:
            task = asyncio.create_task(last.ack(multiple=True))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class BareEdge:
    """The sockets of each routing key, the bindings they need, and the consumer."""

    def __init__(self, channel: AbstractChannel, binder: aiormq.abc.AbstractChannel,
                 queue: AbstractQueue) -> None:
        self._channel = channel
        self._binder = binder
        self._queue = queue
        self._sockets: dict[str, set[BareSocket]] = {}
        self._holders: dict[str, int] = {}
        self._bound: set[str] = {BROADCAST}
        self._locks = KeyedLocks()
        self._ack = GroupedAck(PREFETCH)

    @classmethod
    async def open(cls, connection: aio_pika.abc.AbstractConnection) -> BareEdge:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        events, _commands = await declare_exchanges(channel)
        edges = await declare_edge_exchange(channel, events)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(edges, routing_key=BROADCAST)
        binder = await (await connection.channel()).get_underlay_channel()
        edge = cls(channel, binder, queue)
        await queue.consume(edge.on_message)
        return edge

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        frame = text_frame(message.body)
        for socket in self._sockets.get(message.routing_key or "", ()):
            socket.send(frame)
        self._ack.done(message)

    async def hold(self, socket: BareSocket, keys: Iterable[str]) -> None:
        """Bind whichever of ``keys`` is not bound yet, then deliver them to ``socket``."""
        keys = tuple(keys)
        for key in keys:
            self._holders[key] = self._holders.get(key, 0) + 1
        try:
            await asyncio.gather(*(self._converge(key) for key in keys))
        except BaseException:
            self.release(socket, keys)
            raise
        for key in (*keys, BROADCAST):
            self._sockets.setdefault(key, set()).add(socket)

    def release(self, socket: BareSocket, keys: Iterable[str]) -> None:
        for key in (*keys, BROADCAST):
            sockets = self._sockets.get(key)
            if sockets is not None:
                sockets.discard(socket)
                if not sockets:
                    del self._sockets[key]
        for key in keys:
            left = self._holders.get(key, 0) - 1
            if left > 0:
                self._holders[key] = left
            else:
                self._holders.pop(key, None)
                task = asyncio.create_task(self._converge(key))
                task.add_done_callback(_log_failure)

    async def _converge(self, key: str) -> None:
        """Bind or unbind ``key`` as its holders want now, one call at a time per key."""
        async with self._locks.hold(key):
            wanted = key in self._holders
            if wanted and key not in self._bound:
                await self._binder.queue_bind(self._queue.name, EDGE_EXCHANGE, key)
                self._bound.add(key)
            elif not wanted and key in self._bound:
                self._bound.discard(key)
                await self._binder.queue_unbind(self._queue.name, EDGE_EXCHANGE, key)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("unbind failed", exc_info=task.exception())


class BareSocket(tornado.websocket.WebSocketHandler):
    """One client: its keys bound, then ``welcome``, then the frames of its keys."""

    def initialize(self, edge: BareEdge) -> None:
        self._edge = edge
        self._keys: tuple[str, ...] = ()
        self._held = False
        self._closed = False

    def prepare(self) -> None:
        try:
            self._keys = token_keys(self.get_query_argument("token", ""))
        except ValueError as exc:
            self.set_status(401)
            self.set_header("Content-Type", "application/json")
            self.finish(orjson.dumps({"error": "token_invalid", "message": str(exc)}))

    def check_origin(self, origin: str) -> bool:
        return True

    async def open(self, *args: Any, **kwargs: Any) -> None:
        try:
            await self._edge.hold(self, self._keys)
        except Exception:
            log.warning("binding failed", exc_info=True)
            self.close(1013, "broker unavailable, retry later")
            return
        self._held = True
        if self._closed:
            self._edge.release(self, self._keys)
            return
        self.send(text_frame(WELCOME))

    def send(self, frame: bytes) -> None:
        connection = self.ws_connection
        if connection is None or connection.is_closing() or connection.stream is None:
            return
        with contextlib.suppress(StreamClosedError):
            connection.stream.write(frame)

    def on_message(self, message: str | bytes) -> None:
        """Clients of this bench send nothing; whatever they send is ignored."""

    def on_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._held:
            self._edge.release(self, self._keys)


async def serve(amqp_url: str, lifetime_s: float) -> None:
    connection = await aio_pika.connect(amqp_url, client_properties={
        "connection_name": "warren-bench-bare-edge"})
    try:
        edge = await BareEdge.open(connection)
        # No access log: the edge logs an upgrade only at DEBUG, and a line per connect
        # would be most of a connect's cost here.
        app = tornado.web.Application([(r"/ws", BareSocket, {"edge": edge})],
                                      log_function=lambda _handler: None)
        server = tornado.httpserver.HTTPServer(app)
        sockets = bind_sockets(0, "127.0.0.1", backlog=1024)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sys.stdout.buffer.write(orjson.dumps({"message": READY, "port": port}) + b"\n")
        sys.stdout.buffer.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lifetime_s)
        server.stop()
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="issue 19's bare edge (B) for bench.edge_floor")
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format='{"message": "%(message)s", "level": "%(levelname)s"}')
    uvloop.run(serve(args.amqp_url, args.lifetime))


if __name__ == "__main__":
    main()
