"""The edge's only uses of Tornado internals, for the Tornado versions they were written for.

Both save cost on every socket (bench/history/fanout.md, "What changed for these
targets" and "Reading these numbers"):

- :func:`send_now` hands a frame to the kernel at once when nothing is queued on the
  stream, skipping ``IOStream.write``'s future and buffer bookkeeping on the fan-out path.
- :func:`release_handshake` drops what only the upgrade needed once the socket is open:
  the request (its headers, which Tornado's ``WebSocketHandler.get`` keeps alive for the
  connection's life), the response headers and the template namespace, about 5 KB per
  socket.

They rely on facts Tornado does not promise: ``IOStream.socket`` is the connected socket
and ``IOStream.writing()`` is false when nothing is queued; once a ``WebSocketHandler``
has detached its stream, nothing reads its ``request``, ``_headers`` or ``ui`` again.
:data:`SUPPORTED` is the range of versions they were checked against, and
tests/unit/test_tornado_fast.py checks each fact against the installed Tornado and fails
outside that range. On any other version both fall back to what Tornado does by itself:
correct, only slower and larger.
"""

from __future__ import annotations

from typing import Final

import tornado
import tornado.web
from tornado.iostream import IOStream

#: Tornado versions (major, minor) these shortcuts were checked against: from, and below.
SUPPORTED: Final = ((6, 6), (6, 7))

#: Whether the installed Tornado is one of them.
ENABLED: Final = SUPPORTED[0] <= tornado.version_info[:2] < SUPPORTED[1]


def send_now(stream: IOStream, data: bytes) -> int:
    """Write as much of ``data`` as the kernel takes now, straight to the socket; return
    how many bytes that was. 0 when the stream has writes queued (``data`` must then go
    behind them, with ``stream.write``), is not a plain TCP stream (TLS), or the socket
    buffer is full. Other socket errors (the peer reset the connection) are raised."""
    if not ENABLED or type(stream) is not IOStream or stream.writing():
        return 0
    try:
        return stream.socket.send(data)
    except BlockingIOError:
        return 0


def release_handshake(handler: tornado.web.RequestHandler) -> None:
    """Let go of what only the upgrade needed; call it in ``open()``, once the stream is
    detached from the HTTP connection. Afterwards ``handler.request`` is None."""
    if not ENABLED:
        return
    handler.request.headers.clear()
    handler.request = None  # type: ignore[assignment]
    handler._headers = None  # type: ignore[assignment]
    handler.ui = None  # type: ignore[assignment]  # as Tornado's own _break_cycles does
