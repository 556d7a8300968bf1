"""Completions reach users who were offline, once, on their next socket after ``welcome``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shared.db import make_engine, session_factory
from shared.db.notifications import NotificationStore
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.excel import WorkerProcess, http, until_logged, worker_env


@pytest.fixture
def exports_dir(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
async def exports_edge(make_edge: Callable[..., EdgeServer], exports_dir: Path) -> EdgeServer:
    server = make_edge(WARREN_EXPORTS_DIR=str(exports_dir))
    await server.start()
    return server


@pytest.fixture
async def worker(amqp_url: str, database_url: str, exports_dir: Path) -> AsyncIterator[WorkerProcess]:
    process = WorkerProcess(worker_env(amqp_url, database_url, exports_dir))
    await process.start()
    yield process
    await process.kill()


async def probe(client: Client, user: str) -> str:
    """Send a message to oneself; return the type of the next frame, which must be the ack
    or the message itself: a replayed notification would have been written before either."""
    await client.send({"type": "message.send", "ref": "probe", "to": f"user:{user}", "data": {}})
    frame = await client.recv()
    return "probe" if frame.get("ref") == "probe" or frame.get("type") == "message" else str(frame)


async def test_offline_user_gets_the_completion_on_reconnect_once(
    worker: WorkerProcess, exports_edge: EdgeServer, token_for: Callable[..., str],
    database_url: str,
) -> None:
    token = token_for("alice")
    status, _, body = await http(exports_edge.port, "/api/exports", token=token, method="POST",
                                 body={"report": "sample", "params": {"rows": 50}})
    assert status == 202
    task_id = body["task_id"]
    # Nobody is connected: the worker finishes, and the broker had no socket to route to.
    await until_logged([worker], "export built", 1)

    client = await Client.connect(exports_edge.port, token)
    pending = await client.recv()
    assert pending["type"] == "excel.done" and pending["v"] == 1
    assert pending["id"] == f"{task_id}-done"
    assert pending["data"]["task_id"] == task_id
    assert pending["data"]["download_url"] == f"/api/exports/{task_id}/file"
    client.close()

    again = await Client.connect(exports_edge.port, token)
    assert await probe(again, "alice") == "probe"  # the ack, not a replay
    store = NotificationStore(session_factory(make_engine(database_url)))
    assert store.pending(["alice"]) == {}


async def test_online_user_gets_it_live_and_not_again_on_reconnect(
    worker: WorkerProcess, exports_edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    token = token_for("bob")
    client = await Client.connect(exports_edge.port, token)
    ack = await client.request({"type": "excel.create", "ref": 1,
                                "data": {"report": "sample", "params": {"rows": 5}}})
    task_id = ack["data"]["id"]
    while True:
        frame = await client.recv()
        if frame.get("type") == "excel.done":
            break
    assert frame["data"]["task_id"] == task_id
    client.close()
    # The socket may get the event a moment before the worker marks the row delivered; a
    # socket opened in that moment gets it again, with the same id (docs/exports.md,
    # "Notifications"). Past that moment, never.
    await until_logged([worker], "notification settled", 1)
    assert worker.messages("notification settled")[0]["live"] is True
    again = await Client.connect(exports_edge.port, token)
    assert await probe(again, "bob") == "probe"


async def test_failures_wait_for_offline_users_too(
    worker: WorkerProcess, exports_edge: EdgeServer, token_for: Callable[..., str],
    publisher: Any,
) -> None:
    from shared.messaging import Address, Envelope

    me = Address.user("carol")
    bad = Envelope(type="excel.create", to=me, sender=me, data={"report": "nope"})
    await publisher.publish_command(bad)
    await until_logged([worker], "task refused", 1)
    assert worker.messages("task refused")[0]["task_id"] == bad.id
    client = await Client.connect(exports_edge.port, token_for("carol"))
    pending = await client.recv()
    assert pending["type"] == "excel.failed"
    assert pending["data"] == {"task_id": bad.id, "code": "unknown_report",
                               "message": pending["data"]["message"]}
