"""One command's id in the logs of every process it passes through, and on its way back."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from tests.support.client import Client
from tests.support.up import PASSWORD, WarrenUp, login, no_cat, up_env


async def test_a_commands_id_is_logged_by_the_edge_the_runner_and_the_edge_again(
    amqp_url: str, tmp_path: Path
) -> None:
    env = up_env(amqp_url, tmp_path, WARREN_LOG_LEVEL="DEBUG", **no_cat(tmp_path))
    up = WarrenUp(env, [], tmp_path)
    try:
        await asyncio.to_thread(up.start)
        passwords = dict(PASSWORD.findall(up.output()))
        edge_port = up.children()["edge-1"][1]
        async with httpx.AsyncClient(timeout=10) as http:
            token = await login(http, f"http://127.0.0.1:{edge_port}", "bob", passwords["bob"])
        client = await Client.connect(edge_port, token)
        ack = await client.request(
            {"type": "run.start", "ref": "r", "data": {"job": "lines", "args": {"count": 2}}}
        )
        run_id = ack["data"]["id"]
        while True:
            frame = await client.recv(timeout=30)
            if frame["type"] == "run.finished" and frame["data"]["run_id"] == run_id:
                break
        client.connection.close()

        def line(name: str, message: str) -> re.Pattern[str]:
            return re.compile(
                rf"^{name}\s+\| \S+ \w+\s+{message}  .*correlation_id={re.escape(run_id)}\b"
            )

        # Lines may reach the supervisor's output a little after the frames: awaited.
        await asyncio.to_thread(up.wait_for, line("edge-1", "command accepted"), 10)
        await asyncio.to_thread(up.wait_for, line("runner-1", "run started"), 10)
        await asyncio.to_thread(up.wait_for, line("runner-1", "run finished"), 10)
        delivered = await asyncio.to_thread(up.wait_for, line("edge-1", "event delivered"), 10)
        assert "routing_key=user.bob" in delivered.string
        assert await asyncio.to_thread(up.stop) == 0
    finally:
        up.kill()
