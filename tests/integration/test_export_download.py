"""Downloading an export with a client that goes away: normal, so logged at most at INFO
and counted in ``warren_edge_export_downloads_total``, never an uncaught exception.

The client is a raw socket, so the test decides exactly how much it reads before it
closes: part of a file larger than every buffer between the two (mid-download), or
exactly ``Content-Length`` bytes (what curl does, closing before the edge has finished).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared.db import make_engine, session_factory
from shared.db.exports import ExportStore
from shared.db.notifications import make_notification
from shared.exports.storage import stored_name
from services.ws_edge.server import EdgeServer

LARGE = 16 << 20  # far beyond the socket buffers of both ends
SMALL = 200_000  # a few 64 KiB chunks


class AccessLogged(logging.Handler):
    """Sets ``done`` when the edge writes the access-log line of a request to ``path``:
    the handler has returned by then, and with it anything it logged."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.done = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "tornado.access" and self.path in record.getMessage():
            self.done.set()


@contextmanager
def access_logged(path: str) -> Iterator[AccessLogged]:
    handler = AccessLogged(path)
    logger = logging.getLogger("tornado.access")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def stored_export(database_url: str, exports_dir: Path, task_id: str, size: int) -> None:
    """A finished export of ``size`` bytes owned by alice, as the worker leaves it."""
    exports_dir.mkdir(exist_ok=True)
    (exports_dir / stored_name(task_id)).write_bytes(b"x" * size)
    engine = make_engine(database_url)
    store = ExportStore(session_factory(engine))
    store.claim(task_id, "alice", "sample", {})
    note = make_notification(f"{task_id}-done", "alice", "excel.done", b"{}")
    assert store.finish(task_id, file_name=stored_name(task_id), download_name="big.xlsx",
                        size=size, rows=1, notification=note, store_file=lambda: None)
    engine.dispose()


def fetch_and_close(port: int, path: str, token: str, read: int | None) -> tuple[int, int]:
    """GET ``path`` on a blocking socket; read ``read`` bytes of the body (None: all of it),
    then close at once. Returns the Content-Length and the bytes read.

    It runs on a thread of its own, as a separate client process would: it closes the
    moment it holds the bytes, while the edge's loop is busy with its own next step.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if read is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no room for the file
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        found = re.search(rb"\r\ncontent-length: *(\d+)(\r\n|$)", head, re.IGNORECASE)
        assert found is not None, head
        length = int(found.group(1))
        wanted = length if read is None else read
        got = len(body)
        while got < wanted:
            chunk = sock.recv(min(65536, wanted - got))
            assert chunk, f"closed after {got} bytes"
            got += len(chunk)
    return length, got


async def download(port: int, path: str, token: str, *, read: int | None) -> tuple[int, int]:
    return await asyncio.to_thread(fetch_and_close, port, path, token, read)


def problems(records: list[logging.LogRecord]) -> list[str]:
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}" for r in records
        if r.levelno >= logging.ERROR or r.exc_info is not None or "Traceback" in r.getMessage()
    ]


def downloads(edge: EdgeServer, outcome: str) -> float | None:
    return edge.metrics.registry.get_sample_value(
        "warren_edge_export_downloads_total", {"outcome": outcome}
    )


@pytest.fixture
def exports_dir(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
async def exports_edge(make_edge: Callable[..., EdgeServer], exports_dir: Path) -> EdgeServer:
    edge = make_edge(WARREN_EXPORTS_DIR=str(exports_dir))
    await edge.start()
    return edge


async def test_a_client_closing_mid_download_is_logged_at_info_and_counted(
    exports_edge: EdgeServer, database_url: str, exports_dir: Path,
    token_for: Callable[..., str], caplog: pytest.LogCaptureFixture,
) -> None:
    stored_export(database_url, exports_dir, "big1", LARGE)
    path = "/api/exports/big1/file"
    with caplog.at_level(logging.INFO), access_logged(path) as logged:
        length, got = await download(exports_edge.port, path, token_for("alice"), read=100_000)
        await asyncio.wait_for(logged.done.wait(), 30)
    assert (length, got) == (LARGE, 100_000)
    assert problems(caplog.records) == []
    (closed,) = [r for r in caplog.records if r.getMessage() == "export download closed by the client"]
    assert closed.levelno == logging.INFO and getattr(closed, "task_id") == "big1"
    assert getattr(closed, "sent") < LARGE
    assert downloads(exports_edge, "client_closed") == 1
    assert downloads(exports_edge, "complete") == 0


async def test_a_client_closing_right_after_the_last_byte_is_a_complete_download(
    exports_edge: EdgeServer, database_url: str, exports_dir: Path,
    token_for: Callable[..., str], caplog: pytest.LogCaptureFixture,
) -> None:
    stored_export(database_url, exports_dir, "small1", SMALL)
    path = "/api/exports/small1/file"
    # The close races the edge's end of the response; several rounds make sure the
    # close comes first at least once.
    rounds = 8
    with caplog.at_level(logging.INFO):
        for _ in range(rounds):
            with access_logged(path) as logged:
                length, got = await download(exports_edge.port, path, token_for("alice"), read=None)
                await asyncio.wait_for(logged.done.wait(), 30)
            assert got == length == SMALL
    assert problems(caplog.records) == []
    assert downloads(exports_edge, "complete") == rounds
    assert downloads(exports_edge, "client_closed") == 0
