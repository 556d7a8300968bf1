"""The example application (examples/shop) installed beside Warren and used as a user would.

The example is installed into a virtualenv of its own, and ``warren up`` runs from that
virtualenv's interpreter: the runner and the Excel worker find the example's job and
report through the entry points of the installed distribution, not through any path of
this checkout. Warren itself and its dependencies come from the project's virtualenv,
added to the new one as a site directory: the suite installs nothing from the network.
"""

from __future__ import annotations

import ast
import asyncio
import io
import os
import re
import sqlite3
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import openpyxl
import pytest

from services.supervisor.ports import free_port
from tests.support.rabbit import BrokerAdmin
from tests.support.up import WarrenUp, up_env
from warren.client import Client, Event, WarrenError

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop"
PASSWORD = re.compile(r"^\[up\]\s+(alice|bob|carol)\s+password (\S+)", re.MULTILINE)
INSTALL_TIMEOUT_S = 300.0
SERVICE = "warren_example_shop.service:service"
EVENT_TIMEOUT_S = 60.0
TEXT = "the quick brown fox\njumps over the lazy dog\nthe end\n"


@dataclass(frozen=True, slots=True)
class Shop:
    python: Path  # the example's virtualenv's interpreter
    env: dict[str, str]  # warren up's environment, with SHOP_DATABASE
    edge: str  # http://127.0.0.1:<port>
    passwords: dict[str, str]


@pytest.fixture(scope="module")
def shop_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the example installed (``pip install -e examples/shop``, offline:
    its dependency, Warren, is already there)."""
    venv = tmp_path_factory.mktemp("shop-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                   timeout=INSTALL_TIMEOUT_S)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
    ).stdout.strip()
    # addsitedir, not a bare path line: the project's own .pth files (Warren's editable
    # install among them) must run too.
    project = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "warren-project.pth").write_text(
        f"import site; site.addsitedir({project!r})\n"
    )
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--no-build-isolation", "--editable", str(SHOP)],
        check=True, timeout=INSTALL_TIMEOUT_S,
    )
    return python


@pytest.fixture(scope="module")
def shop(
    shop_venv: Path, broker_admin: BrokerAdmin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    workdir = tmp_path_factory.mktemp("shop")
    files = workdir / "files"
    files.mkdir()
    (files / "fox.txt").write_text(TEXT)
    vhost = broker_admin.create_vhost()
    env = up_env(
        broker_admin.vhost_url(vhost), workdir,
        WARREN_RUNNER_FILES_DIR=str(files),
        WARREN_CAT_URL=f"http://127.0.0.1:{free_port('127.0.0.1')}",  # no Cat: not needed
        WARREN_CAT_VENV=str(workdir / "no-cat-here"),
        WARREN_CAT_CONNECT_TIMEOUT_S="1",
        WARREN_SERVICE_PORT="0",  # the shop's service, on a free port too
        SHOP_DATABASE=str(workdir / "shop.db"),
    )
    run_env = {**{k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}, **env}
    # The shop's service starts with Warren's, before the edges: an edge takes
    # orders.create from its first client on.
    up = WarrenUp(env, ["--service", f"shop={SERVICE}"], workdir, python=str(shop_venv))
    try:
        subprocess.run([str(shop_venv.parent / "shop-init")], env=run_env, check=True,
                       timeout=60)
        up.start()
        edge = f"http://127.0.0.1:{up.children()['edge-1'][1]}"
        yield Shop(shop_venv, run_env, edge, dict(PASSWORD.findall(up.output())))
        assert up.stop() == 0
    finally:
        up.kill()
        broker_admin.delete_vhost(vhost)


async def _login(shop: Shop, user: str) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{shop.edge}/auth/login",
                                   json={"username": user, "password": shop.passwords[user]})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


@pytest.fixture
async def alice(shop: Shop) -> AsyncIterator[tuple[Client, str]]:
    token = await _login(shop, "alice")
    client = Client(shop.edge.replace("http://", "ws://") + "/ws", token=token)
    yield client, token
    await client.close()


async def _first(events: AsyncIterator[Event], type_: str, key: str, value: str) -> Event:
    """The first event of ``type_`` whose ``data[key]`` is ``value``."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        async for event in events:
            if event.type == type_ and event.data.get(key) == value:
                return event
    raise AssertionError(f"the events ended before {type_}")


def test_the_example_imports_only_warrens_public_api() -> None:
    internal = {"shared", "services", "tests"}
    offenders = []
    for path in sorted(SHOP.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(SHOP)}:{node.lineno} {n}"
                          for n in names if n.split(".")[0] in internal]
    assert offenders == []
    assert (SHOP / "warren_example_shop" / "words.py").exists()  # the walk saw the package


async def test_the_word_count_job_streams_its_count(
    shop: Shop, alice: tuple[Client, str]
) -> None:
    client, _ = alice
    events = client.events("run.output", "run.finished", "run.error")
    await client.connect()
    ack = await client.command(
        "run.start", {"job": "shop_word_count", "args": {"file": "fox.txt", "every": 1}}
    )
    run_id = ack["id"]
    lines: list[str] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        async for event in events:
            if event.data.get("run_id") != run_id:
                continue
            if event.type == "run.output":
                lines += event.data["lines"]
            elif event.type == "run.finished":
                assert event.data["status"] == "completed", (event.data, lines)
                break
            else:
                raise AssertionError(event.data)
    assert lines[:3] == ["1 lines, 4 words", "2 lines, 9 words", "3 lines, 11 words"]
    assert lines[3] == "done: 3 lines, 11 words, 9 different"
    assert lines[4].split() == ["3", "the"]

    # A file outside the runner's files directory never reaches the job.
    refused = await client.command(
        "run.start", {"job": "shop_word_count", "args": {"file": "../shop.db"}}
    )
    error = await _first(events, "run.error", "command_id", refused["id"])
    assert error.data["code"] == "invalid_args" and "file" in error.data["message"]


async def test_the_orders_report_is_a_workbook_of_the_shops_own_rows(
    shop: Shop, alice: tuple[Client, str]
) -> None:
    client, token = alice
    events = client.events("excel.done", "excel.failed")
    await client.connect()
    ack = await client.command(
        "excel.create", {"report": "shop_orders", "params": {"customer": "alice"}}
    )
    done = await _first(events, "excel.done", "task_id", ack["id"])
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(shop.edge + done.data["download_url"],
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(response.content), read_only=True).active
    assert sheet is not None
    rows = [tuple(row) for row in sheet.iter_rows(values_only=True)]
    assert rows[0] == ("id", "customer", "item", "quantity", "amount", "placed")
    seeded = [(r[0], r[1], r[2], r[3], float(r[4]), r[5].date().isoformat()) for r in rows[1:3]]
    assert seeded == [(1, "alice", "notebook", 3, 7.5, "2024-01-05"),
                      (3, "alice", "poster", 2, 30.0, "2024-03-20")]
    assert all(row[1] == "alice" for row in rows[1:])
    assert done.data["rows"] == len(rows) - 1

    with pytest.raises(WarrenError) as refused:
        await client.command("excel.create", {"report": "shop_orders",
                                              "params": {"customer": 42}})
    assert refused.value.code == "invalid_params" and "customer" in refused.value.message


async def test_the_backend_script_publishes_to_a_group(
    shop: Shop, alice: tuple[Client, str]
) -> None:
    # What `warren key add shop --scope publish` runs, from the example's virtualenv.
    made = await asyncio.to_thread(
        subprocess.run,
        [str(shop.python), "-m", "services.cli", "key", "add", "shop", "--scope", "publish"],
        env=shop.env, capture_output=True, text=True, check=True, timeout=60,
    )
    key = made.stdout.strip()
    client, _ = alice
    notices = client.events("shop.notice")
    await client.connect()  # alice is in the group team
    notice = {**shop.env, "SHOP_WARREN_URL": shop.edge, "SHOP_WARREN_KEY": key}
    sent = await asyncio.to_thread(
        subprocess.run,
        [str(shop.python.parent / "shop-notice"), "team", "the mugs are back", "--id",
         "mugs-back"],
        env=notice, capture_output=True, text=True, timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "mugs-back"
    event = await _first(notices, "shop.notice", "text", "the mugs are back")
    assert (event.id, event.sender, event.to) == ("mugs-back", "service:shop", "group:team")

    refused = await asyncio.to_thread(
        subprocess.run,
        [str(shop.python.parent / "shop-notice"), "team", "hello"],
        env={**notice, "SHOP_WARREN_KEY": "wk_forged_000000"}, capture_output=True,
        text=True, timeout=60,
    )
    assert refused.returncode == 1 and "shop-notice:" in refused.stderr


async def test_orders_create_is_answered_by_the_shops_service(
    shop: Shop, alice: tuple[Client, str]
) -> None:
    client, _ = alice
    outcomes = client.events("orders.create.done", "orders.create.failed")
    await client.connect()
    ack = await client.command("orders.create", {"item": "mug", "quantity": 2})
    done = await _first(outcomes, "orders.create.done", "command_id", ack["id"])
    assert done.sender == "service:shop" and done.to == "user:alice"
    order_id = done.data["order_id"]
    assert (done.data["item"], done.data["quantity"], done.data["amount"]) == ("mug", 2, "16.00")

    refused = await client.command("orders.create", {"item": "yacht", "quantity": 1})
    failed = await _first(outcomes, "orders.create.failed", "command_id", refused["id"])
    assert failed.data["code"] == "unknown_item" and "mug" in failed.data["message"]
    too_many = await client.command("orders.create", {"item": "pen", "quantity": 10_000})
    failed = await _first(outcomes, "orders.create.failed", "command_id", too_many["id"])
    assert failed.data["code"] == "invalid_quantity"

    # The order is in the shop's own table, where its report reads it.
    with closing(sqlite3.connect(shop.env["SHOP_DATABASE"])) as database:
        row = database.execute(
            "SELECT customer, item, quantity, amount_cents FROM orders WHERE id = ?", (order_id,)
        ).fetchone()
    assert row == ("alice", "mug", 2, 1600)
