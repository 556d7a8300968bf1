"""Workers as real processes: sharing the queue, killed mid-task, SIGTERM; the broker lost
or restarted mid-task, and the task's delivery given back while its build goes on."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client import CollectorRegistry

from shared.db import make_engine, session_factory
from shared.db.exports import ExportStatus, ExportStore
from shared.db.notifications import Notification
from services.excel_worker.server import ExcelWorkerServer
from services.excel_worker.settings import ExcelSettings
from services.ws_edge.server import EdgeServer
from services.ws_edge.settings import EdgeSettings
from tests.support.client import Client
from tests.support.edge import edge_env
from tests.support.excel import WorkerProcess, until_logged, worker_env
from tests.support.private_broker import PrivateBroker
from tests.support.rabbit import BrokerAdmin, reconnected
from tests.support.tcp_proxy import TcpProxy

SLOW = {"WARREN_EXCEL_TEST_ROW_DELAY_S": "0.05"}
ATTACHED = "task redelivered while it is handled here; this delivery waits for it"
WAITING = "task held by a live worker elsewhere; this delivery waits for it"


@pytest.fixture
def exports_dir(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
async def exports_edge(make_edge: Callable[..., EdgeServer], exports_dir: Path) -> EdgeServer:
    server = make_edge(WARREN_EXPORTS_DIR=str(exports_dir))
    await server.start()
    return server


@pytest.fixture
async def spawn(
    amqp_url: str, database_url: str, exports_dir: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Start worker processes; every one started is killed afterwards."""
    started: list[WorkerProcess] = []

    async def start(**overrides: str) -> WorkerProcess:
        process = WorkerProcess(worker_env(amqp_url, database_url, exports_dir, **overrides))
        started.append(process)
        return await process.start()

    yield start
    for process in started:
        await process.kill()


@pytest.fixture
def store(database_url: str) -> ExportStore:
    return ExportStore(session_factory(make_engine(database_url)))


def done_notifications(database_url: str, task_id: str) -> int:
    with session_factory(make_engine(database_url))() as session:
        return session.query(Notification).filter(Notification.id.like(f"{task_id}-%")).count()


def xlsx_files(exports_dir: Path) -> list[str]:
    return sorted(p.name for p in exports_dir.glob("*.xlsx"))


async def until_event(client: Client, kind: str, task_id: str, *, min_rows: int = 0,
                      timeout: float = 60.0) -> dict[str, Any]:
    while True:
        frame = await client.recv(timeout)
        data = frame.get("data", {})
        if frame.get("type") == kind and data.get("task_id") == task_id:
            if kind != "excel.progress" or data["rows"] >= min_rows:
                return frame


async def ask(client: Client, rows: int, ref: int = 1) -> str:
    ack = await client.request({"type": "excel.create", "ref": ref,
                                "data": {"report": "sample", "params": {"rows": rows}}})
    assert ack["type"] == "ack", ack
    return str(ack["data"]["id"])


async def fault_mid_task(
    edge: EdgeServer, worker: ExcelWorkerServer, token: str,
    fault: Callable[[], Awaitable[object]], *, timeout: float,
) -> str:
    """A 120-row export is building when ``fault`` hits the broker: both servers
    reconnect by themselves and the owner hears it is done. The task's id."""
    client = await Client.connect(edge.port, token)
    task_id = await ask(client, 120)
    await until_event(client, "excel.progress", task_id, min_rows=5)
    restored = asyncio.gather(reconnected(worker.connection), reconnected(edge.connection))
    await fault()
    await asyncio.wait_for(restored, timeout)
    await done_live_or_pending(client, edge.port, token, task_id)
    return task_id


async def done_live_or_pending(client: Client, port: int, token: str, task_id: str) -> None:
    """The done event reaches the open socket live, or waits as a pending notification
    for the next one: read both sockets and take the first."""
    late = await Client.connect(port, token)
    waits = [asyncio.create_task(until_event(c, "excel.done", task_id)) for c in (client, late)]
    finished, others = await asyncio.wait(waits, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    for other in others:
        other.cancel()
    assert finished, "no excel.done after the broker came back"


async def test_two_workers_share_the_queue(
    spawn: Callable[..., Any], exports_edge: EdgeServer, token_for: Callable[..., str],
    exports_dir: Path,
) -> None:
    first, second = await spawn(**SLOW), await spawn(**SLOW)
    client = await Client.connect(exports_edge.port, token_for("alice"))
    ids = [await ask(client, 10, ref) for ref in range(6)]
    pending = set(ids)
    while pending:
        frame = await client.recv(60)
        if frame.get("type") == "excel.done":
            pending.discard(frame["data"]["task_id"])
    await until_logged([first, second], "export built", len(ids))
    built = {
        name: [r["task_id"] for r in process.messages("export built")]
        for name, process in (("first", first), ("second", second))
    }
    assert built["first"] and built["second"], built  # both took work
    assert sorted(built["first"] + built["second"]) == sorted(ids)  # each task built once
    assert xlsx_files(exports_dir) == sorted(f"{i}.xlsx" for i in ids)


async def test_worker_killed_mid_task_completes_once_on_another(
    spawn: Callable[..., Any], exports_edge: EdgeServer, token_for: Callable[..., str],
    exports_dir: Path, store: ExportStore, database_url: str,
) -> None:
    doomed = await spawn(**SLOW)
    client = await Client.connect(exports_edge.port, token_for("alice"))
    task_id = await ask(client, 60)
    await until_event(client, "excel.progress", task_id, min_rows=5)
    await doomed.kill()  # SIGKILL to the worker and its build child, mid-build
    record = store.get(task_id)
    assert record is not None and record.status is ExportStatus.RUNNING
    # What the dead build wrote, openpyxl's temporary file included, is in its work
    # directory on the storage volume (retention removes it later), not in /tmp.
    assert [p.parent.suffix for p in exports_dir.glob(".*.build/openpyxl.*")] == [".build"]

    survivor = await spawn(**SLOW)
    done = await until_event(client, "excel.done", task_id)
    assert done["data"]["rows"] == 60
    await until_logged([survivor], "export built", 1)
    assert [r["task_id"] for r in survivor.messages("export built")] == [task_id]
    assert doomed.messages("export built") == []
    record = store.get(task_id)
    assert record is not None and (record.status, record.attempts) == (ExportStatus.DONE, 2)
    assert xlsx_files(exports_dir) == [f"{task_id}.xlsx"]
    assert done_notifications(database_url, task_id) == 1


async def test_sigterm_finishes_the_current_task(
    spawn: Callable[..., Any], exports_edge: EdgeServer, token_for: Callable[..., str],
    store: ExportStore,
) -> None:
    worker = await spawn(**SLOW, WARREN_EXCEL_SHUTDOWN_DEADLINE_S="20")
    client = await Client.connect(exports_edge.port, token_for("alice"))
    task_id = await ask(client, 30)
    await until_event(client, "excel.progress", task_id, min_rows=2)
    stopping = asyncio.create_task(worker.terminate())
    await until_event(client, "excel.done", task_id)
    assert await stopping == 0
    record = store.get(task_id)
    assert record is not None and (record.status, record.attempts) == (ExportStatus.DONE, 1)


async def test_sigterm_past_the_deadline_leaves_the_task_to_another_replica(
    spawn: Callable[..., Any], exports_edge: EdgeServer, token_for: Callable[..., str],
    store: ExportStore, exports_dir: Path,
) -> None:
    worker = await spawn(**SLOW, WARREN_EXCEL_SHUTDOWN_DEADLINE_S="0.5")
    client = await Client.connect(exports_edge.port, token_for("alice"))
    task_id = await ask(client, 400)
    await until_event(client, "excel.progress", task_id, min_rows=2)
    assert await worker.terminate() == 0
    assert worker.messages("shutdown deadline passed mid-task; leaving it unacknowledged")
    assert list(exports_dir.glob(".*.build")) == []  # the killed build's work directory is gone
    await spawn(WARREN_EXCEL_TEST_ROW_DELAY_S="0")
    await until_event(client, "excel.done", task_id)
    record = store.get(task_id)
    assert record is not None and (record.status, record.attempts) == (ExportStatus.DONE, 2)


async def test_broker_connection_loss_mid_task(
    amqp_url: str, database_url: str, exports_dir: Path, exports_edge: EdgeServer,
    broker_admin: BrokerAdmin, vhost: str, token_for: Callable[..., str], store: ExportStore,
) -> None:
    settings = ExcelSettings.from_env(worker_env(amqp_url, database_url, exports_dir, **SLOW))
    worker = ExcelWorkerServer(settings, CollectorRegistry())
    await worker.start()
    try:
        task_id = await fault_mid_task(
            exports_edge, worker, token_for("alice"),
            lambda: broker_admin.close_connections(vhost), timeout=30,
        )
        record = store.get(task_id)
        assert record is not None and record.status is ExportStatus.DONE and record.rows == 120
        assert xlsx_files(exports_dir) == [f"{task_id}.xlsx"]
        assert done_notifications(database_url, task_id) == 1
    finally:
        await worker.stop()


async def test_broker_restart_mid_task_completes_it_exactly_once(
    private_broker: PrivateBroker, private_amqp_url: str, database_url: str, exports_dir: Path,
    token_for: Callable[..., str], store: ExportStore,
) -> None:
    # The node itself stops and starts: the worker's delivery and channel are gone, the
    # persistent command in the durable queue is not, and is delivered again.
    edge = EdgeServer(EdgeSettings.from_env(edge_env(
        private_amqp_url, database_url, WARREN_EXPORTS_DIR=str(exports_dir)
    )), CollectorRegistry())
    worker = ExcelWorkerServer(ExcelSettings.from_env(
        worker_env(private_amqp_url, database_url, exports_dir, **SLOW)
    ), CollectorRegistry())
    await edge.start()
    await worker.start()
    try:
        task_id = await fault_mid_task(
            edge, worker, token_for("alice"),
            lambda: asyncio.to_thread(private_broker.restart), timeout=60,
        )
        assert worker.consumer is not None and await worker.consumer.drain(60)  # the redelivered copy is settled too
        record = store.get(task_id)
        assert record is not None and record.status is ExportStatus.DONE and record.rows == 120
        assert xlsx_files(exports_dir) == [f"{task_id}.xlsx"]
        assert done_notifications(database_url, task_id) == 1
    finally:
        await worker.stop()
        await edge.stop()


def build_children(worker: WorkerProcess) -> int:
    """The worker's build processes running now: the live children of its fork server."""
    count = 0
    for process in psutil.Process(worker.pid).children(recursive=True):
        try:
            if any("forkserver" in part for part in process.cmdline()):
                count += sum(1 for child in process.children()
                             if child.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            continue
    return count


async def builds_when_logged(worker: WorkerProcess, message: str, timeout: float) -> int:
    """The worker's build processes at the moment it logs ``message``."""
    await worker.wait_log(message, timeout)
    return build_children(worker)


async def test_broker_restart_mid_build_attaches_the_redelivery_to_the_running_build(
    private_broker: PrivateBroker, private_amqp_url: str, database_url: str, exports_dir: Path,
    token_for: Callable[..., str], store: ExportStore,
) -> None:
    # The broker takes the delivery back when it stops, and gives it to the same worker
    # when it is back, while the first build still runs: that copy waits for the build
    # instead of starting a second one, and is no attempt.
    edge = EdgeServer(EdgeSettings.from_env(edge_env(
        private_amqp_url, database_url, WARREN_EXPORTS_DIR=str(exports_dir)
    )), CollectorRegistry())
    worker = WorkerProcess(worker_env(private_amqp_url, database_url, exports_dir, **SLOW))
    await edge.start()
    try:
        await worker.start()
        token = token_for("alice")
        client = await Client.connect(edge.port, token)
        task_id = await ask(client, 400)
        await until_event(client, "excel.progress", task_id, min_rows=5)
        assert build_children(worker) == 1
        attached = asyncio.create_task(builds_when_logged(worker, ATTACHED, 90))
        await asyncio.to_thread(private_broker.restart)
        await done_live_or_pending(client, edge.port, token, task_id)
        record = store.get(task_id)
        assert record is not None and (record.status, record.attempts) == (ExportStatus.DONE, 1)
        assert await asyncio.wait_for(attached, 10) == 1  # the copy arrived mid-build: one build
        assert len(worker.messages("export built")) == 1
        assert worker.messages("task finished elsewhere meanwhile; this build is dropped") == []
        assert xlsx_files(exports_dir) == [f"{task_id}.xlsx"]
        assert done_notifications(database_url, task_id) == 1
        # The copy was settled with the build: the worker's one slot takes the next task.
        second = await ask(client, 3, ref=2)
        await until_event(client, "excel.done", second)
    finally:
        await worker.kill()
        await edge.stop()


def through(proxy: TcpProxy, amqp_url: str) -> str:
    """``amqp_url`` reached through ``proxy``."""
    parsed = urllib.parse.urlsplit(amqp_url)
    netloc = f"{parsed.username}:{parsed.password}@127.0.0.1:{proxy.port}"
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


@pytest.fixture(params=["postgres_url", "database_url"])
def task_db(request: pytest.FixtureRequest) -> str:
    """The database the workers share: PostgreSQL, or a SQLite file on this host."""
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture
async def broker_proxy(amqp_url: str) -> AsyncIterator[TcpProxy]:
    """A TCP proxy to the test's broker: cutting it drops one worker's connection only."""
    target = urllib.parse.urlsplit(amqp_url)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5672).start()
    yield proxy
    await proxy.close()


async def held_elsewhere(
    spawn: Callable[..., Any], make_edge: Callable[..., EdgeServer], amqp_url: str,
    task_db: str, exports_dir: Path, proxy: TcpProxy, token: str,
) -> tuple[WorkerProcess, WorkerProcess, Client, str]:
    """A worker builds a task when its broker connection drops; the broker gives the
    delivery to a second worker, which finds the task held and waits. Returns the
    builder, the waiter, the owner's client and the task id."""
    edge = make_edge(WARREN_EXPORTS_DIR=str(exports_dir), WARREN_DATABASE_URL=task_db)
    await edge.start()
    builder = await spawn(WARREN_DATABASE_URL=task_db,
                          WARREN_AMQP_URL=through(proxy, amqp_url), **SLOW)
    client = await Client.connect(edge.port, token)
    task_id = await ask(client, 200)
    await until_event(client, "excel.progress", task_id, min_rows=5)
    waiter = await spawn(WARREN_DATABASE_URL=task_db, **SLOW)
    proxy.cut()  # the builder's delivery goes back to the queue, and to the waiter
    assert await builds_when_logged(waiter, WAITING, 30) == 0
    assert build_children(builder) == 1
    return builder, waiter, client, task_id


async def test_a_delivery_of_a_task_another_live_worker_builds_waits_for_that_build(
    spawn: Callable[..., Any], make_edge: Callable[..., EdgeServer], amqp_url: str,
    task_db: str, exports_dir: Path, broker_proxy: TcpProxy, token_for: Callable[..., str],
) -> None:
    builder, waiter, _client, task_id = await held_elsewhere(
        spawn, make_edge, amqp_url, task_db, exports_dir, broker_proxy, token_for("alice")
    )
    # The builder finishes (its done event stays pending: its broker link is cut); then
    # the waiter gets the hold, finds the task done, and acks.
    await waiter.wait_log("task already final; acked", timeout=60)
    assert len(builder.messages("export built")) == 1
    assert waiter.messages("export built") == []
    store = ExportStore(session_factory(make_engine(task_db)))
    record = store.get(task_id)
    assert record is not None and (record.status, record.attempts) == (ExportStatus.DONE, 1)
    assert xlsx_files(exports_dir) == [f"{task_id}.xlsx"]
    assert done_notifications(task_db, task_id) == 1


async def test_a_waiting_delivery_builds_once_the_builder_dies_as_attempt_two(
    spawn: Callable[..., Any], make_edge: Callable[..., EdgeServer], amqp_url: str,
    task_db: str, exports_dir: Path, broker_proxy: TcpProxy, token_for: Callable[..., str],
) -> None:
    builder, waiter, client, task_id = await held_elsewhere(
        spawn, make_edge, amqp_url, task_db, exports_dir, broker_proxy, token_for("alice")
    )
    await builder.kill()  # its database connection closes, and the hold with it
    done = await until_event(client, "excel.done", task_id)
    assert done["data"]["rows"] == 200
    assert builder.messages("export built") == []
    assert len(waiter.messages("export built")) == 1
    store = ExportStore(session_factory(make_engine(task_db)))
    record = store.get(task_id)
    assert record is not None and (record.status, record.attempts) == (ExportStatus.DONE, 2)
    assert xlsx_files(exports_dir) == [f"{task_id}.xlsx"]
    assert done_notifications(task_db, task_id) == 1
