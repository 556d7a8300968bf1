"""Reports of the application's own, end to end: a module named in WARREN_EXCEL_REPORTS,
announced by a real worker in the catalogue, asked for through a real edge, built in
the worker's build child from the application's own SQLite table."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from prometheus_client import CollectorRegistry

from shared.db import make_engine, session_factory
from shared.db.exports import ExportStatus, ExportStore
from shared.messaging import Command
from services.excel_worker.registry import ReportLoadError
from services.excel_worker.server import ExcelWorkerServer
from services.excel_worker.settings import ExcelSettings
from services.ws_edge.server import EdgeServer
from tests.support.catalogue import WAIT_S, known
from tests.support.client import Client
from tests.support.excel import http, worker_env
from tests.support.site import Site, site_on_path

ORDERS = 20_000
SHOP_MODULE = '''
import sqlite3
from contextlib import closing

from warren import Column, ColumnType, Param, Report, Table

DATABASE = {database!r}
COLUMNS = (
    Column("id", ColumnType.INTEGER),
    Column("customer"),
    Column("amount", ColumnType.NUMBER),
    Column("placed", ColumnType.DATE),
    Column("paid", ColumnType.BOOLEAN),
)


def orders(params, ctx):
    connection = sqlite3.connect(DATABASE)

    def rows():
        with closing(connection):
            cursor = connection.execute(
                "SELECT id, customer, amount, placed, paid FROM orders"
                " WHERE amount >= ? ORDER BY id", (params["min_amount"],))
            for id_, customer, amount, placed, paid in cursor:
                yield (id_, customer, amount, placed, bool(paid))

    return Table(COLUMNS, rows())


def broken_rows(params, ctx):
    def rows():
        yield [1, "ok", 1.0, "2024-01-01", True]
        yield [2, "ok", 2.0, "2024-01-02", True]
        yield [3, "short"]
    return Table(COLUMNS, rows())


ORDERS = Report("acme_orders", "the shop's orders", orders,
                params={{"min_amount": Param("float", "smallest amount", default=0.0)}})
BROKEN_ROWS = Report("acme_broken_rows", "rows that do not fit", broken_rows)
PAYROLL = Report("acme_payroll", "for hr only", orders, roles=("hr",),
                 params={{"min_amount": Param("float", "smallest amount", default=0.0)}})
'''
REFERENCES = "acme_shop:ORDERS,acme_shop:BROKEN_ROWS,acme_shop:PAYROLL"


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT,"
                           " amount REAL, placed TEXT, paid INTEGER)")
        connection.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
            ((i, f"=customer {i}" if i == 7 else f"customer {i}", i / 4,
              f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d}", i % 2) for i in range(1, ORDERS + 1)),
        )
    root = tmp_path / "site"
    root.mkdir()
    with site_on_path(root, monkeypatch, "acme") as site:
        site.module("acme_shop", SHOP_MODULE.format(database=str(database)))
        yield site


@pytest.fixture
async def make_worker(
    amqp_url: str, database_url: str, tmp_path: Path,
) -> AsyncIterator[Callable[..., ExcelWorkerServer]]:
    built: list[ExcelWorkerServer] = []

    def build(**overrides: str) -> ExcelWorkerServer:
        env = worker_env(amqp_url, database_url, tmp_path / "exports", **overrides)
        server = ExcelWorkerServer(ExcelSettings.from_env(env), CollectorRegistry())
        built.append(server)
        return server

    yield build
    for server in built:
        await server.stop()


@pytest.fixture
async def shop_worker(shop: Site, make_worker: Callable[..., ExcelWorkerServer]) -> ExcelWorkerServer:
    worker = make_worker(WARREN_EXCEL_REPORTS=REFERENCES)
    await worker.start()
    return worker


@pytest.fixture
async def edge(
    shop_worker: ExcelWorkerServer, make_edge: Callable[..., EdgeServer], tmp_path: Path,
) -> EdgeServer:
    server = make_edge(WARREN_EXPORTS_DIR=str(tmp_path / "exports"))
    await server.start()
    await known(server, Command.EXCEL_CREATE)
    assert server.deps is not None
    await server.deps.commands.view.wait_until(
        lambda view: view.report("acme_payroll") is not None, WAIT_S
    )
    return server


async def until_event(client: Client, kind: str, task_id: str) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []
    while True:
        frame = await client.recv(60)
        if frame.get("data", {}).get("task_id") == task_id:
            seen.append(frame)
            if frame["type"] == kind:
                frame["seen"] = seen
                return frame


async def test_a_report_of_the_applications_own_table_streams_into_the_workbook(
    edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    token = token_for("alice")
    client = await Client.connect(edge.port, token)
    status, _, body = await http(edge.port, "/api/exports", token=token, method="POST",
                                 body={"report": "acme_orders", "params": {"title": "Orders"}})
    assert status == 202, body
    task_id = body["task_id"]
    done = await until_event(client, "excel.done", task_id)
    assert done["data"]["rows"] == ORDERS
    assert done["data"]["filename"].startswith("warren-acme_orders-")
    # The report did not say how many rows: progress has no total before the end (the
    # worker drops an update while the previous one is still being published, so the
    # last one, with the total, may not be sent).
    progress = [f["data"] for f in done["seen"] if f["type"] == "excel.progress"]
    assert progress and progress[0]["rows"] == 0
    for update in progress:
        assert (update["total"], update["percent"]) in {(None, None), (ORDERS, 100.0)}, update
        assert update["total"] is None or update["rows"] == ORDERS

    status, response, _ = await http(edge.port, f"/api/exports/{task_id}/file", token=token)
    assert status == 200 and response is not None
    book = openpyxl.load_workbook(BytesIO(response.body), read_only=True)
    assert book.properties.title == "Orders"
    rows = list(book["acme_orders"].iter_rows(values_only=True))
    assert rows[0] == ("id", "customer", "amount", "placed", "paid")
    assert len(rows) == ORDERS + 1
    assert rows[1] == (1, "customer 1", 0.25, datetime(2024, 2, 2), True)
    assert rows[7][1] == "=customer 7"  # text, not a formula
    assert rows[ORDERS] == (ORDERS, f"customer {ORDERS}", ORDERS / 4,
                            datetime.combine(date(2024, ORDERS % 12 + 1, ORDERS % 28 + 1),
                                             datetime.min.time()), False)


async def test_rows_that_do_not_match_the_columns_fail_the_task_naming_the_row(
    shop_worker: ExcelWorkerServer, edge: EdgeServer, token_for: Callable[..., str],
    database_url: str,
) -> None:
    token = token_for("bob")
    client = await Client.connect(edge.port, token)
    ack = await client.request({"type": "excel.create", "ref": 1,
                                "data": {"report": "acme_broken_rows"}})
    failed = await until_event(client, "excel.failed", ack["data"]["id"])
    assert failed["data"]["code"] == "invalid_row"
    assert failed["data"]["message"] == "row 3 has 2 values for 5 columns"
    record = ExportStore(session_factory(make_engine(database_url))).get(ack["data"]["id"])
    assert record is not None and (record.status, record.attempts) == (ExportStatus.FAILED, 1)
    # Not retried, not dead-lettered, and the worker goes on.
    assert shop_worker.metrics.registry.get_sample_value("warren_excel_retries_total") == 0
    ack = await client.request({"type": "excel.create", "ref": 2,
                                "data": {"report": "acme_orders", "params": {"min_amount": 4999}}})
    done = await until_event(client, "excel.done", ack["data"]["id"])
    assert done["data"]["rows"] == ORDERS - 4 * 4999 + 1


async def test_a_report_with_roles_is_refused_to_users_without_them(
    edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    body = {"report": "acme_payroll", "params": {"min_amount": 4999.5}}
    status, _, error = await http(edge.port, "/api/exports", token=token_for("carol"),
                                  method="POST", body=body)
    assert (status, error["error"]) == (403, "forbidden")
    assert "role 'hr'" in error["message"]
    client = await Client.connect(edge.port, token_for("carol"))
    reply = await client.request({"type": "excel.create", "ref": 1, "data": body})
    assert (reply["type"], reply["data"]["code"]) == ("error", "forbidden")

    hr = token_for("dora", (), ("hr",))
    client = await Client.connect(edge.port, hr)
    status, _, accepted = await http(edge.port, "/api/exports", token=hr, method="POST", body=body)
    assert status == 202
    done = await until_event(client, "excel.done", accepted["task_id"])
    assert done["data"]["rows"] == ORDERS - 4 * 4999 - 1


async def test_a_worker_with_a_broken_report_module_refuses_to_start_naming_it(
    shop: Site, make_worker: Callable[..., ExcelWorkerServer],
) -> None:
    shop.module("acme_broken", "raise ImportError('orders database driver missing')\n")
    worker = make_worker(WARREN_EXCEL_REPORTS="acme_broken:REPORT")
    with pytest.raises(ReportLoadError, match="'acme_broken:REPORT' failed to load: "
                                              "ImportError: orders database driver missing"):
        await worker.start()
