"""``warren up`` as a newcomer runs it: every service as its own OS process, on one machine."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from services.supervisor.ports import free_port
from tests.support.cat_v1 import CatV1Double, reply_for
from tests.support.cat_v2 import cat_python
from tests.support.client import Client
from tests.support.up import PASSWORD, WarrenUp, login, no_cat, up_env

REPLICAS = ["--edges", "2", "--runners", "2", "--workers", "2", "--relays", "2"]
RELAY_KEY = re.compile(r"^\[up\]\s+relay key (\S+)", re.MULTILINE)
TRY_SEND = re.compile(
    r"^\[up\]\s+try\s+curl -X POST (\S+) -H \"Authorization: Bearer (\S+)\" -d '(.+)'$",
    re.MULTILINE,
)



async def test_replicas_of_every_service_start_serve_and_stop_in_order(
    amqp_url: str, tmp_path: Path
) -> None:
    up = WarrenUp(up_env(amqp_url, tmp_path, **no_cat(tmp_path)), REPLICAS, tmp_path)
    try:
        await asyncio.to_thread(up.start)
        children = up.children()
        assert sorted(children) == sorted(
            f"{kind}-{i}" for kind in ("edge", "relay", "runner", "excel") for i in (1, 2)
        )
        ports = [port for _, port in children.values()]
        assert len(set(ports)) == 8
        output = up.output()
        passwords = dict(PASSWORD.findall(output))
        assert set(passwords) == {"alice", "bob", "carol"}
        assert "none: nothing answers at" in output and '"Cat unavailable"' in output

        async with httpx.AsyncClient(timeout=10) as http:
            for name, (_, port) in children.items():
                ready = await http.get(f"http://127.0.0.1:{port}/readyz")
                assert ready.status_code == 200, name
            edge1 = f"http://127.0.0.1:{children['edge-1'][1]}"
            edge2 = f"http://127.0.0.1:{children['edge-2'][1]}"
            assert up.console_url == f"{edge1}/"
            page = await http.get(up.console_url)
            assert (
                page.status_code == 200
                and "script-src 'self'" in page.headers["content-security-policy"]
            )
            token = await login(http, edge2, "alice", passwords["alice"])
            cat = await http.get(
                f"{edge2}/api/console/cat", headers={"Authorization": f"Bearer {token}"}
            )
            assert cat.json()["cat"] == "unreachable"

        # Through the second edge: a run on some runner replica, and chat without a Cat.
        client = await Client.connect(children["edge-2"][1], token)
        ack = await client.request(
            {"type": "run.start", "ref": "r", "data": {"job": "lines", "args": {"count": 3}}}
        )
        run_id = ack["data"]["id"]
        ask = await client.request(
            {"type": "chat.ask", "ref": "q", "data": {"text": "anyone there?"}}
        )
        outcomes: dict[str, dict[str, object]] = {}
        while len(outcomes) < 2:
            frame = await client.recv(timeout=30)
            data = frame.get("data", {})
            if frame.get("type") == "run.finished" and data.get("run_id") == run_id:
                outcomes["run"] = data
            elif frame.get("type") == "chat.error" and data.get("ask_id") == ask["data"]["id"]:
                outcomes["chat"] = data
        assert outcomes["run"]["status"] == "completed" and outcomes["run"]["lines"] == 3
        assert outcomes["chat"]["code"] == "cat_unavailable"
        client.connection.close()

        assert await asyncio.to_thread(up.stop) == 0
    finally:
        up.kill()
    output = up.output()
    assert max(
        output.index("[up] edge-1 stopped"), output.index("[up] edge-2 stopped")
    ) < output.index("[up] stopping excel-1, excel-2, runner-1, runner-2, relay-1, relay-2")
    assert "[up] all stopped" in output
    for name, (pid, _) in children.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (
            name
        )


async def test_demo_users_are_created_only_in_an_empty_database(
    amqp_url: str, tmp_path: Path
) -> None:
    env = up_env(amqp_url, tmp_path, **no_cat(tmp_path))
    first, second = WarrenUp(env, [], tmp_path), WarrenUp(env, [], tmp_path)
    try:
        for up in (first, second):
            await asyncio.to_thread(up.start)
            assert await asyncio.to_thread(up.stop) == 0
    finally:
        for up in (first, second):
            up.kill()
    assert len(PASSWORD.findall(first.output())) == 3
    assert not PASSWORD.findall(second.output())


async def test_a_signal_during_start_up_stops_what_was_started(
    amqp_url: str, tmp_path: Path
) -> None:
    up = WarrenUp(up_env(amqp_url, tmp_path, **no_cat(tmp_path)), ["--runners", "2"], tmp_path)
    try:
        up.launch()
        await asyncio.to_thread(up.wait_for, r"started runner-2 \(pid")
        assert await asyncio.to_thread(up.stop) == 0
    finally:
        up.kill()
    output = up.output()
    assert "Warren is up" not in output and "started edge-1" not in output
    assert "[up] runner-2 stopped" in output and "[up] all stopped" in output
    for name, (pid, _) in up.children().items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (
            name
        )


async def test_up_makes_a_service_key_and_the_printed_send_works(
    amqp_url: str, tmp_path: Path
) -> None:
    cat = CatV1Double().start()
    up = WarrenUp(up_env(amqp_url, tmp_path, WARREN_CAT_URL=cat.url), [], tmp_path)
    try:
        await asyncio.to_thread(up.start)
        output = up.output()
        key_line, try_line = RELAY_KEY.search(output), TRY_SEND.search(output)
        assert key_line is not None and try_line is not None, output
        key = key_line.group(1)
        url, bearer, body = try_line.groups()
        assert bearer == key and len(key) >= 24
        assert url == f"http://127.0.0.1:{up.children()['relay-1'][1]}/send"
        edge = f"http://127.0.0.1:{up.children()['edge-1'][1]}"
        password = dict(PASSWORD.findall(output))["bob"]
        # As curl -d sends it.
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        async with httpx.AsyncClient(timeout=30) as http:
            answered = await http.post(
                url, content=body, headers={**form, "Authorization": f"Bearer {bearer}"}
            )
            assert answered.status_code == 200, answered.text
            assert answered.json() == {"response": reply_for("Hello, Cat")}
            token = await login(http, edge, "bob", password)  # a user's JWT does as well
            as_bob = await http.post(
                url, content=body, headers={**form, "Authorization": f"Bearer {token}"}
            )
            assert as_bob.json() == {"response": reply_for("Hello, Cat")}
            refused = await http.post(url, content=body, headers=form)
            assert refused.status_code == 401 and refused.json()["error"] == "token_missing"
        assert await asyncio.to_thread(up.stop) == 0
    finally:
        up.kill()
        await cat.stop()


async def test_up_uses_a_configured_service_key_and_does_not_print_it(
    amqp_url: str, tmp_path: Path
) -> None:
    configured = "configured-relay-key-0123456789"
    up = WarrenUp(
        up_env(amqp_url, tmp_path, WARREN_RELAY_API_KEY=configured, **no_cat(tmp_path)),
        [], tmp_path,
    )
    try:
        await asyncio.to_thread(up.start)
        url = f"http://127.0.0.1:{up.children()['relay-1'][1]}/send"
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                url, json={"user_id": "bob", "message": "hi"},
                headers={"Authorization": f"Bearer {configured}"},
            )
        # Past the key check: no Cat answers here.
        assert response.status_code == 502 and response.json()["error"] == "cat_unavailable"
        assert await asyncio.to_thread(up.stop) == 0
    finally:
        up.kill()
    output = up.output()
    assert "relay key as configured (WARREN_RELAY_API_KEY)" in output
    assert configured not in output and "Bearer $WARREN_RELAY_API_KEY" in output


def up_refused(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``warren up`` run to its end, for a start that must be refused."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "up"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_a_taken_port_stops_up_before_anything_starts(amqp_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**up_env(amqp_url, tmp_path, **no_cat(tmp_path)), "WARREN_EDGE_PORT": str(port)}
        done = up_refused(env, tmp_path)
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 (edge-1) is in use: set WARREN_EDGE_PORT" in done.stderr
    assert "started" not in done.stdout


def test_up_refuses_to_run_in_production(amqp_url: str, tmp_path: Path) -> None:
    env = {**up_env(amqp_url, tmp_path), "WARREN_ENV": "production"}
    done = up_refused(env, tmp_path)
    assert done.returncode == 2 and "set WARREN_ENV=development" in done.stderr


@pytest.mark.skipif(
    cat_python() is None, reason="no Cat 2.x in .venv-cat (scripts/test installs it)"
)
async def test_a_local_cat_is_started_when_none_answers(amqp_url: str, tmp_path: Path) -> None:
    env = up_env(amqp_url, tmp_path, WARREN_CAT_URL=f"http://127.0.0.1:{free_port('127.0.0.1')}")
    up = WarrenUp(env, [], tmp_path)
    try:
        await asyncio.to_thread(up.start)
        output = up.output()
        assert re.search(r"\[up\] cat ready at http://127.0.0.1:\d+/status", output)
        assert re.search(r"cat\s+http://127.0.0.1:\d+\s+\(a local Cat 2.x from ", output)
        edge = f"http://127.0.0.1:{up.children()['edge-1'][1]}"
        password = dict(PASSWORD.findall(output))["bob"]
        async with httpx.AsyncClient(timeout=10) as http:
            token = await login(http, edge, "bob", password)
            cat = await http.get(
                f"{edge}/api/console/cat", headers={"Authorization": f"Bearer {token}"}
            )
        assert cat.json() == {
            "cat": "reachable",
            "protocol": "v2",
            "version": cat.json()["version"],
        }
        assert (tmp_path / "cat" / "cat.log").stat().st_size > 0
        assert await asyncio.to_thread(up.stop) == 0
    finally:
        up.kill()
    output = up.output()
    assert (
        output.index("[up] edge-1 stopped")
        < output.index("[up] stopping cat")
        < output.index("[up] all stopped")
    )
