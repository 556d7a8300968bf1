"""Exports end to end on real parts: edge, worker, broker vhost, SQLite file, xlsx files."""

from __future__ import annotations

import asyncio
import os
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from prometheus_client import CollectorRegistry

from shared.db import make_engine, session_factory
from shared.db.exports import ExportStatus, ExportStore
from shared.db.notifications import Notification, make_notification
from shared.db.runs import Run
from shared.messaging import Address, Command, Envelope
from shared.messaging.broker import Publisher, connect, declare_work_queue
from services.excel_worker.retention import sweep
from services.excel_worker.server import ExcelWorkerServer
from services.excel_worker.settings import ExcelSettings
from services.ws_edge.server import EdgeServer
from tests.support.catalogue import declared, known
from tests.support.client import Client
from tests.support.excel import http, worker_env

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
TABLE = {
    "report": "table",
    "params": {
        "title": "People",
        "columns": [
            {"name": "name", "type": "string"},
            {"name": "age", "type": "integer"},
            {"name": "score", "type": "number"},
            {"name": "born", "type": "date"},
            {"name": "seen", "type": "datetime"},
            {"name": "active", "type": "boolean"},
        ],
        "rows": [
            ["Ada", 36, 1234.5, "1815-12-10", "2024-05-01T10:20:30", True],
            ["=HYPERLINK(\"http://evil\",\"x\")", 1, -2.5, None, None, False],
            ["+1+2", None, None, None, None, None],
            ["-3+4", 2, 0, None, None, None],
            ["@SUM(A1:A2)", 3, None, None, None, None],
            ["\tcmd", 4, None, None, None, None],
            ["\rcmd", 5, None, None, None, None],
            ["plain - text", 6, None, None, None, None],
        ],
    },
}


@pytest.fixture
def exports_dir(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
async def make_worker(
    amqp_url: str, database_url: str, exports_dir: Path
) -> AsyncIterator[Callable[..., ExcelWorkerServer]]:
    built: list[ExcelWorkerServer] = []

    def build(**overrides: str) -> ExcelWorkerServer:
        settings = ExcelSettings.from_env(worker_env(amqp_url, database_url, exports_dir, **overrides))
        server = ExcelWorkerServer(settings, CollectorRegistry())
        built.append(server)
        return server

    yield build
    for server in built:
        await server.stop()


@pytest.fixture
async def worker(make_worker: Callable[..., ExcelWorkerServer]) -> ExcelWorkerServer:
    server = make_worker()
    await server.start()
    return server


@pytest.fixture
async def exports_edge(make_edge: Callable[..., EdgeServer], exports_dir: Path) -> EdgeServer:
    server = make_edge(WARREN_EXPORTS_DIR=str(exports_dir))
    await server.start()
    return server


@pytest.fixture
def store(database_url: str, worker: ExcelWorkerServer) -> ExportStore:
    return ExportStore(session_factory(make_engine(database_url)))


async def workbook(port: int, task_id: str, token: str) -> Any:
    """Download a finished export and open its sheet with openpyxl."""
    status, response, _ = await http(port, f"/api/exports/{task_id}/file", token=token)
    assert status == 200 and response is not None
    return openpyxl.load_workbook(BytesIO(response.body)).active


def _sample(worker: ExcelWorkerServer, name: str, **labels: str) -> float | None:
    return worker.metrics.registry.get_sample_value(name, labels)


async def until_event(client: Client, kind: str, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Read frames until an event of ``kind`` for ``task_id``; return it."""
    while True:
        frame = await client.recv(timeout)
        if frame.get("type") == kind and frame.get("data", {}).get("task_id") == task_id:
            return frame


async def test_table_export_content_styles_and_neutralisation(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
    exports_dir: Path,
) -> None:
    token = token_for("alice")
    client = await Client.connect(exports_edge.port, token)
    status, response, body = await http(exports_edge.port, "/api/exports", token=token,
                                        method="POST", body=TABLE)
    assert status == 202, body
    task_id = body["task_id"]
    assert response is not None and response.headers["Location"] == f"/api/exports/{task_id}"

    done = await until_event(client, "excel.done", task_id)
    assert done["from"] == "service:excel_worker" and done["to"] == "user:alice"
    assert done["data"]["download_url"] == f"/api/exports/{task_id}/file"
    assert done["data"]["filename"].startswith("warren-table-")

    status, _, view = await http(exports_edge.port, f"/api/exports/{task_id}", token=token)
    assert status == 200
    assert (view["status"], view["rows"], view["attempts"]) == ("done", 8, 1)

    status, response, _ = await http(exports_edge.port, f"/api/exports/{task_id}/file", token=token)
    assert status == 200 and response is not None
    assert response.headers["Content-Type"] == XLSX
    assert response.headers["Content-Disposition"] == f'attachment; filename="{done["data"]["filename"]}"'
    content = response.body
    assert len(content) == done["data"]["size"] == int(response.headers["Content-Length"])
    # Only the server-chosen name is in storage; no temporary file is left behind.
    assert [p.name for p in exports_dir.iterdir()] == [f"{task_id}.xlsx"]

    book = openpyxl.load_workbook(BytesIO(content))
    assert book.properties.title == "People"
    sheet = book.active
    header = [c.value for c in sheet[1]]
    assert header == ["name", "age", "score", "born", "seen", "active"]
    assert all(c.font.b and c.fill.fgColor.rgb == "001F4E78" for c in sheet[1])
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == "A1:F9"
    assert sheet.column_dimensions["B"].width == 12
    ada = sheet[2]
    assert ada[0].value == "Ada" and ada[1].value == 36 and ada[1].number_format == "#,##0"
    assert ada[2].value == 1234.5 and ada[2].number_format == "#,##0.00"
    assert ada[3].value.year == 1815 and ada[3].number_format == "yyyy-mm-dd"
    assert ada[4].value.hour == 10 and ada[4].number_format == "yyyy-mm-dd hh:mm:ss"
    assert ada[5].value is True

    # Formula injection: text kept as typed, stored as a string, with Excel's quote prefix.
    dangerous = [row[0] for row in list(sheet.iter_rows(min_row=3, max_row=8))]
    expected = [r[0] for r in TABLE["params"]["rows"][1:7]]  # type: ignore[index]
    assert [c.value for c in dangerous] == expected
    assert all(c.data_type == "s" and c.quotePrefix for c in dangerous)
    safe = sheet["A9"]
    assert safe.value == "plain - text" and not safe.quotePrefix
    with zipfile.ZipFile(BytesIO(content)) as archive:
        xml = archive.read("xl/worksheets/sheet1.xml")
    assert b"<f>" not in xml and b"<f " not in xml


async def test_websocket_command_gets_progress_and_done(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    client = await Client.connect(exports_edge.port, token_for("bob"))
    ack = await client.request(
        {"type": "excel.create", "ref": 1, "data": {"report": "sample", "params": {"rows": 3000}}}
    )
    assert ack["type"] == "ack"
    task_id = ack["data"]["id"]
    progress = await until_event(client, "excel.progress", task_id)
    assert progress["data"]["total"] == 3000 and 0 <= progress["data"]["percent"] <= 100
    done = await until_event(client, "excel.done", task_id)
    assert done["data"]["rows"] == 3000
    status, _, listed = await http(exports_edge.port, "/api/exports", token=token_for("bob"))
    assert status == 200 and [e["task_id"] for e in listed["exports"]] == [task_id]


async def test_download_is_for_the_owner_or_an_admin_and_ids_are_plain(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    alice = token_for("alice")
    client = await Client.connect(exports_edge.port, alice)
    _, _, body = await http(exports_edge.port, "/api/exports", token=alice, method="POST",
                            body={"report": "sample", "params": {"rows": 10}})
    task_id = body["task_id"]
    await until_event(client, "excel.done", task_id)
    port = exports_edge.port

    status, _, error = await http(port, f"/api/exports/{task_id}/file", token=token_for("bob"))
    assert (status, error["error"]) == (404, "not_found")
    status, _, error = await http(port, f"/api/exports/{task_id}", token=token_for("bob"))
    assert (status, error["error"]) == (404, "not_found")
    status, _, error = await http(port, f"/api/exports/{task_id}/file")
    assert (status, error["error"]) == (401, "token_missing")
    status, response, _ = await http(port, f"/api/exports/{task_id}/file",
                                     token=token_for("root", (), ("admin",)))
    assert status == 200 and response is not None and response.body.startswith(b"PK")

    for trick in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..", f"{task_id}.xlsx",
                  "%2Fetc%2Fpasswd", f"{task_id}%00", "a%5Cb", "x" * 101):
        status, _, error = await http(port, f"/api/exports/{trick}/file", token=alice)
        assert status in {400, 404}, trick
        assert error is not None and error["error"] in {"invalid_task_id", "not_found"}, trick
    status, _, error = await http(port, "/api/exports/../../etc/passwd", token=alice)
    assert status == 404
    status, _, error = await http(port, "/api/exports/0123456789abcdef/file", token=alice)
    assert (status, error["error"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"report": "nope"}, "unknown_report", "report must be one of activity, sample, table"),
        ({"params": {}}, "unknown_report", "report must be one of"),
        ({"report": "sample", "params": {"rows": 10_000_000}}, "invalid_params",
         "rows must be at most 1000000"),
        ({"report": "sample", "params": {"rows": "ten"}}, "invalid_params", "rows must be an integer"),
        ({"report": "sample", "params": {"rows": 5, "evil": 1}}, "invalid_params", "'evil'"),
        ({"report": "table", "params": {"columns": [{"name": "n", "type": "integer"}],
                                        "rows": [[1]] * 20_001}}, "invalid_params",
         "rows must have at most 10000 items"),
        ({"report": "table", "params": {"rows": []}}, "invalid_params", "'columns'"),
        ({"report": "activity", "params": {"status": ["bogus"]}}, "invalid_params", "status"),
        ({"report": "activity", "params": {"since": "monday"}}, "invalid_params", "since"),
        ([], "invalid_params", "data must be an object"),
    ],
)
async def test_bad_requests_are_refused_over_http_naming_the_field(
    exports_edge: EdgeServer, token_for: Callable[..., str], body: Any, code: str, fragment: str,
) -> None:
    status, _, error = await http(exports_edge.port, "/api/exports", token=token_for("alice"),
                                  method="POST", body=body)
    assert (status, error["error"]) == (400, code), error
    assert fragment in error["message"]


async def test_bad_requests_over_the_socket_get_an_error_frame_at_once(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    await known(exports_edge, Command.EXCEL_CREATE)
    token = token_for("alice")
    client = await Client.connect(exports_edge.port, token)
    cases = [
        ({"report": "pivot"}, "unknown_report", "report must be one of"),
        ({"report": "sample", "params": {"rows": 2_000_000}}, "invalid_params",
         "rows must be at most 1000000"),
        ({"report": "activity", "params": {"user": "bob"}}, "invalid_params", "'user'"),
    ]
    for ref, (data, code, fragment) in enumerate(cases):
        reply = await client.request({"type": "excel.create", "ref": ref, "data": data})
        assert (reply["type"], reply["ref"], reply["data"]["code"]) == ("error", ref, code)
        assert fragment in reply["data"]["message"]
    # Nothing was recorded for them.
    _, _, listed = await http(exports_edge.port, "/api/exports", token=token)
    assert listed == {"exports": []}


async def test_rules_across_params_are_the_workers_and_end_in_excel_failed(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
    store: ExportStore,
) -> None:
    await known(exports_edge, Command.EXCEL_CREATE)
    client = await Client.connect(exports_edge.port, token_for("alice"))
    cases = [
        ({"columns": [{"name": "n", "type": "number"}], "rows": [[True]]},
         "rows[0][0]: expected number"),
        ({"columns": [{"name": "n", "type": "vector"}], "rows": []}, "columns[0].type"),
        ({"columns": [{"name": "d", "type": "date"}], "rows": [["yesterday"]]},
         "rows[0][0]: expected date"),
    ]
    for ref, (params, fragment) in enumerate(cases):
        ack = await client.request({"type": "excel.create", "ref": ref,
                                    "data": {"report": "table", "params": params}})
        failed = await until_event(client, "excel.failed", ack["data"]["id"])
        assert failed["data"]["code"] == "invalid_params"
        assert fragment in failed["data"]["message"]
        record = store.get(ack["data"]["id"])
        assert record is not None and record.status is ExportStatus.FAILED
        assert record.error_code == "invalid_params"
    # The worker is still there for good requests.
    ack = await client.request({"type": "excel.create", "ref": 9,
                                "data": {"report": "sample", "params": {"rows": 5}}})
    await until_event(client, "excel.done", ack["data"]["id"])


async def test_redelivered_task_makes_no_second_file_or_notification(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
    publisher: Publisher, exports_dir: Path, database_url: str,
) -> None:
    client = await Client.connect(exports_edge.port, token_for("carol"))
    me = Address.user("carol")
    first = Envelope(type="excel.create", to=me, sender=me,
                     data={"report": "sample", "params": {"rows": 20}})
    await publisher.publish_command(first)
    await until_event(client, "excel.done", first.id)
    built = (exports_dir / f"{first.id}.xlsx").stat().st_mtime_ns
    await publisher.publish_command(first)  # the same command again, as after a lost ack
    marker = Envelope(type="excel.create", to=me, sender=me,
                      data={"report": "sample", "params": {"rows": 1}})
    await publisher.publish_command(marker)
    # One consumer with prefetch 1 takes the queue in order: once the marker is done,
    # the duplicate was handled, and it produced no event.
    frame = await client.recv()
    while frame.get("type") == "excel.progress":
        frame = await client.recv()
    assert frame["type"] == "excel.done" and frame["data"]["task_id"] == marker.id
    assert _sample(worker, "warren_excel_tasks_total", status="duplicate") == 1
    assert (exports_dir / f"{first.id}.xlsx").stat().st_mtime_ns == built
    with session_factory(make_engine(database_url))() as session:
        notes = session.query(Notification).filter(Notification.user_id == "carol").all()
        assert sorted(n.id for n in notes) == sorted([f"{first.id}-done", f"{marker.id}-done"])


async def test_failing_builds_are_retried_then_dead_lettered(
    make_worker: Callable[..., ExcelWorkerServer], exports_edge: EdgeServer,
    token_for: Callable[..., str], tmp_path: Path, database_url: str, amqp_url: str,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("storage is broken")
    worker = make_worker(WARREN_EXPORTS_DIR=str(blocker / "exports"), WARREN_EXCEL_MAX_ATTEMPTS="3")
    # Start-up refuses an unusable storage directory outright...
    with pytest.raises(OSError):
        await worker.start()
    await worker.stop()
    # ...so break it after start-up, as a full or lost volume would.
    storage = tmp_path / "storage"
    worker = make_worker(WARREN_EXPORTS_DIR=str(storage), WARREN_EXCEL_MAX_ATTEMPTS="3")
    await worker.start()
    storage.rmdir()
    storage.write_text("now a file")

    client = await Client.connect(exports_edge.port, token_for("dave"))
    ack = await client.request({"type": "excel.create", "ref": 1,
                                "data": {"report": "sample", "params": {"rows": 5}}})
    failed = await until_event(client, "excel.failed", ack["data"]["id"])
    assert failed["data"]["code"] == "build_failed"
    record = ExportStore(session_factory(make_engine(database_url))).get(ack["data"]["id"])
    assert record is not None and (record.status, record.attempts) == (ExportStatus.FAILED, 3)
    assert record.error and "storage" in record.error
    assert _sample(worker, "warren_excel_retries_total") == 2
    connection = await connect(amqp_url, name="warren-test-dlq")
    async with connection:
        channel = await connection.channel()
        dead = await channel.declare_queue("warren.cmd.excel.create.dead", passive=True)
        async with dead.iterator() as messages:  # the reject follows the event: wait for it
            message = await asyncio.wait_for(messages.__anext__(), 10)
            assert message.message_id == ack["data"]["id"]
            await message.ack()
    assert _sample(worker, "warren_excel_dead_lettered_total") == 1


async def test_retention_deletes_old_files_and_marks_rows_expired(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
    store: ExportStore, exports_dir: Path,
) -> None:
    token = token_for("erin")
    client = await Client.connect(exports_edge.port, token)
    _, _, body = await http(exports_edge.port, "/api/exports", token=token, method="POST",
                            body={"report": "sample", "params": {"rows": 10}})
    task_id = body["task_id"]
    await until_event(client, "excel.done", task_id)
    assert sweep(store, exports_dir, retention_s=3600, build_timeout_s=600) == 0  # too young
    assert sweep(store, exports_dir, retention_s=0, build_timeout_s=600) == 1
    assert not (exports_dir / f"{task_id}.xlsx").exists()
    status, _, view = await http(exports_edge.port, f"/api/exports/{task_id}", token=token)
    assert view["status"] == "expired" and view["expired_at"]
    status, _, error = await http(exports_edge.port, f"/api/exports/{task_id}/file", token=token)
    assert (status, error["error"]) == (410, "expired")
    assert sweep(store, exports_dir, retention_s=0, build_timeout_s=600) == 0


async def test_activity_report_lists_the_users_own_tasks(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    token = token_for("frank")
    client = await Client.connect(exports_edge.port, token)
    other = token_for("grace")
    ids = []
    for count in (1, 2):
        _, _, body = await http(exports_edge.port, "/api/exports", token=token, method="POST",
                                body={"report": "sample", "params": {"rows": count}})
        await until_event(client, "excel.done", body["task_id"])
        ids.append(body["task_id"])
    await http(exports_edge.port, "/api/exports", token=other, method="POST",
               body={"report": "sample", "params": {"rows": 1}})
    _, _, body = await http(exports_edge.port, "/api/exports", token=token, method="POST",
                            body={"report": "activity", "params": {"status": ["done"],
                                                                   "sources": ["exports"]}})
    await until_event(client, "excel.done", body["task_id"])
    _, response, _ = await http(exports_edge.port, f"/api/exports/{body['task_id']}/file", token=token)
    assert response is not None
    sheet = openpyxl.load_workbook(BytesIO(response.body)).active
    rows = [[c.value for c in r] for r in sheet.iter_rows(min_row=2)]
    assert [r[1] for r in rows] == ids
    assert all(r[0] == "export" and r[3] == "done" for r in rows)
    assert sheet["F2"].number_format == "yyyy-mm-dd hh:mm:ss"


async def test_a_socket_task_is_queued_at_once_then_built(
    make_worker: Callable[..., ExcelWorkerServer], exports_edge: EdgeServer,
    token_for: Callable[..., str], amqp_url: str,
) -> None:
    # The work queue exists but no worker consumes it yet: the task waits in the queue.
    connection = await connect(amqp_url, name="warren-test-queue")
    async with connection:
        await declare_work_queue(await connection.channel(), Command.EXCEL_CREATE)
    token = token_for("hana")
    client = await Client.connect(exports_edge.port, token)
    async with declared(amqp_url, Command.EXCEL_CREATE):  # as a worker that stopped would
        await known(exports_edge, Command.EXCEL_CREATE)
        ack = await client.request({"type": "excel.create", "ref": 1,
                                    "data": {"report": "sample", "params": {"rows": 4}}})
    task_id = ack["data"]["id"]
    status, _, view = await http(exports_edge.port, f"/api/exports/{task_id}", token=token)
    assert status == 200
    assert (view["status"], view["report"], view["attempts"]) == ("queued", "sample", 0)
    assert view["owner"] == "hana" and view["started_at"] is None

    await make_worker().start()
    await until_event(client, "excel.done", task_id)
    _, _, view = await http(exports_edge.port, f"/api/exports/{task_id}", token=token)
    assert (view["status"], view["attempts"], view["rows"]) == ("done", 1, 4)


async def test_without_a_worker_the_request_fails_at_once_and_the_task_says_why(
    exports_edge: EdgeServer, token_for: Callable[..., str], amqp_url: str,
) -> None:
    token = token_for("ivan")
    client = await Client.connect(exports_edge.port, token)
    # Declared (a worker's announcement has not expired yet), but no queue was ever made.
    async with declared(amqp_url, Command.EXCEL_CREATE):
        await known(exports_edge, Command.EXCEL_CREATE)
        reply = await client.request({"type": "excel.create", "ref": 1,
                                      "data": {"report": "sample", "params": {"rows": 4}}})
    assert (reply["type"], reply["data"]["code"]) == ("error", "no_service")
    status, _, error = await http(exports_edge.port, "/api/exports", token=token, method="POST",
                                  body={"report": "sample"})
    assert (status, error["error"]) == (503, "no_service")

    _, _, listed = await http(exports_edge.port, "/api/exports", token=token)
    outcomes = [(e["status"], e["error"]["code"]) for e in listed["exports"]]
    assert outcomes == [("failed", "no_service")] * 2
    # Both were answered with the error, so nothing waits for the next socket.
    again = await Client.connect(exports_edge.port, token)
    await again.send({"type": "message.send", "ref": "probe", "to": "user:ivan", "data": {}})
    assert (await again.recv())["type"] in {"ack", "message"}


async def test_stored_names_in_the_database_never_reach_outside_storage(
    exports_edge: EdgeServer, token_for: Callable[..., str], database_url: str, exports_dir: Path,
) -> None:
    exports_dir.mkdir()
    secret = exports_dir.parent / "secret.xlsx"
    secret.write_bytes(b"not yours")
    store = ExportStore(session_factory(make_engine(database_url)))
    store.claim("forged1", "alice", "sample", {})
    note = make_notification("forged1-done", "alice", "excel.done", b"{}")
    assert store.finish("forged1", file_name="../secret.xlsx", download_name="d.xlsx", size=9,
                        rows=1, notification=note, store_file=lambda: None)
    status, response, error = await http(exports_edge.port, "/api/exports/forged1/file",
                                         token=token_for("alice"))
    assert (status, error["error"]) == (410, "file_missing")
    assert response is not None and b"not yours" not in response.body
    assert sweep(store, exports_dir, retention_s=0, build_timeout_s=600) == 1
    assert secret.read_bytes() == b"not yours"  # retention deleted nothing outside storage
    record = store.get("forged1")
    assert record is not None and record.status is ExportStatus.EXPIRED


def test_retention_removes_only_work_directories_no_build_can_still_use(
    database_url: str, tmp_path: Path,
) -> None:
    from shared.db import create_schema

    engine = make_engine(database_url)
    create_schema(engine)
    store = ExportStore(session_factory(engine))
    directory = tmp_path / "exports"
    dead, live = directory / ".t1.0badc0de.build", directory / ".t2.0feedbee.build"
    for work in (dead, live):
        work.mkdir(parents=True)
        (work / "openpyxl.tmp").write_bytes(b"rows")
    old = time.time() - (600 + 3600 + 60)
    os.utime(dead, (old, old))
    keep = directory / "t3.xlsx"
    keep.write_bytes(b"stored")
    os.utime(keep, (old, old))  # stored files go by their row, never by their age on disk
    assert sweep(store, directory, retention_s=0, build_timeout_s=600) == 0
    assert sorted(p.name for p in directory.iterdir()) == [live.name, "t3.xlsx"]
    engine.dispose()


async def test_worker_serves_health_readiness_and_metrics(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    token = token_for("judy")
    client = await Client.connect(exports_edge.port, token)
    _, _, body = await http(exports_edge.port, "/api/exports", token=token, method="POST",
                            body={"report": "sample", "params": {"rows": 5}})
    await until_event(client, "excel.done", body["task_id"])
    await http(exports_edge.port, "/api/exports", token=token, method="POST",
               body={"report": "sample", "params": {"rows": 10_000_000}})  # refused by the edge

    status, _, health = await http(worker.port, "/healthz")
    assert (status, health) == (200, {"status": "ok"})
    status, _, ready = await http(worker.port, "/readyz")
    assert (status, ready) == (200, {"status": "ready"})
    status, response, _ = await http(worker.port, "/metrics")
    assert status == 200 and response is not None
    text = response.body.decode()
    for line in (
        'warren_excel_tasks_by_status{status="done"} 1.0',
        'warren_excel_tasks_by_status{status="queued"} 0.0',
        'warren_excel_tasks_by_status{status="failed"} 0.0',
        'warren_excel_tasks_total{status="done"} 1.0',
        'warren_excel_build_duration_seconds_count{report="sample"} 1.0',
        "warren_excel_rows_written_total 5.0",
        "warren_excel_retries_total 0.0",
        "warren_excel_dead_lettered_total 0.0",
        "warren_excel_tasks_running 0.0",
    ):
        assert line in text.splitlines(), line


async def test_activity_report_includes_runs_and_applies_filters(
    worker: ExcelWorkerServer, exports_edge: EdgeServer, token_for: Callable[..., str],
    database_url: str,
) -> None:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)

    with session_factory(make_engine(database_url)).begin() as session:
        for run_id, owner, status, created in (
            ("r-jan", "kim", "completed", "2024-01-15T08:00:00"),
            ("r-jun", "kim", "failed", "2024-06-15T08:00:00"),
            ("r-jul", "kim", "completed", "2024-07-15T08:00:00"),
            ("r-other", "lee", "completed", "2024-06-15T09:00:00"),
        ):
            session.add(Run(id=run_id, owner=owner, job="countdown", args="{}", replica="r1",
                            status=status, reason="boom" if status == "failed" else None,
                            created_at=at(created),
                            finished_at=at(created) + timedelta(seconds=90),
                            heartbeat_at=at(created)))
    token = token_for("kim")
    client = await Client.connect(exports_edge.port, token)
    _, _, body = await http(exports_edge.port, "/api/exports", token=token, method="POST", body={
        "report": "activity",
        "params": {"since": "2024-02-01", "until": "2024-12-31", "title": "Runs"},
    })
    await until_event(client, "excel.done", body["task_id"])
    sheet = await workbook(exports_edge.port, body["task_id"], token)
    rows = [[c.value for c in r] for r in sheet.iter_rows(min_row=2)]
    # Only kim's runs between the dates; kim's export tasks are created now, after "until".
    assert [(r[0], r[1], r[3]) for r in rows] == [("run", "r-jun", "failed"),
                                                  ("run", "r-jul", "completed")]
    assert rows[0][5] == datetime(2024, 6, 15, 8, 0)
    assert rows[0][6] == datetime(2024, 6, 15, 8, 1, 30)
    assert rows[0][7] == "boom"

    _, _, body = await http(exports_edge.port, "/api/exports", token=token, method="POST", body={
        "report": "activity", "params": {"status": ["completed"], "sources": ["runs"], "limit": 1},
    })
    await until_event(client, "excel.done", body["task_id"])
    sheet = await workbook(exports_edge.port, body["task_id"], token)
    assert [[c.value for c in r][1] for r in sheet.iter_rows(min_row=2)] == ["r-jan"]
