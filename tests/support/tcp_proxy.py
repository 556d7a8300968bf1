"""A TCP proxy on loopback that a test can cut and restore, to make a server unreachable,
or slow down, to make it answer late.

While cut, open connections are reset and new ones are accepted then closed at once,
which is what a client sees of a database or broker that went away. Restoring lets new
connections through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from sqlalchemy.engine import make_url

CHUNK = 1 << 16


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = True
        self._latency_s = 0.0
        self.port = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        sock: socket.socket = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        return self

    def database_url(self, url: str) -> str:
        """The database ``url`` (the proxy's target) reached through the proxy."""
        proxied = make_url(url).set(host="127.0.0.1", port=self.port)
        return proxied.render_as_string(hide_password=False)

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until :meth:`restore`."""
        self._open = False
        for writer in tuple(self._writers):
            _reset(writer)

    def restore(self) -> None:
        self._open = True

    def slow_down(self, latency_s: float) -> None:
        """From now on, hold each chunk the server sends for ``latency_s`` before passing
        it on, as a congested link does; 0 passes them on at once again."""
        self._latency_s = latency_s

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in tuple(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open:
            _reset(writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _reset(writer)
            return
        self._writers |= {writer, upstream_writer}
        pipes = (
            asyncio.create_task(self._pipe(reader, upstream_writer)),
            asyncio.create_task(self._pipe(upstream_reader, writer, answers=True)),
        )
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            for end in (writer, upstream_writer):
                self._writers.discard(end)
                end.close()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, answers: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(CHUNK):
                if answers and self._latency_s:
                    await asyncio.sleep(self._latency_s)  # the fault itself, not a wait
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            sink.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a vanished peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
