"""Excel workers for tests: in-process, or as separate OS processes; and an HTTP helper."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from tests.support.service_process import ServiceProcess


def worker_env(amqp_url: str, database_url: str, exports_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": database_url,
        "WARREN_EXPORTS_DIR": str(exports_dir),
        "WARREN_EXCEL_HOST": "127.0.0.1",
        "WARREN_EXCEL_PORT": "0",
        "WARREN_EXCEL_PROGRESS_INTERVAL_S": "0.05",
        "WARREN_EXCEL_RETRY_BACKOFF_S": "0.05",
        "WARREN_EXCEL_SHUTDOWN_DEADLINE_S": "5",
        "WARREN_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


class WorkerProcess(ServiceProcess):
    """``python -m services.excel_worker`` in a child process (tests/support/service_process.py)."""

    module = "services.excel_worker"
    ready_message = "excel_worker ready"
    own_session = True  # a SIGKILL to its group takes its build child and fork server too


async def http(
    port: int, path: str, *, token: str | None = None, method: str = "GET", body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, HTTPResponse | None, Any]:
    """Call the edge; return status, the response and its JSON body (None if not JSON)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    response: HTTPResponse | None
    try:
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
            body=payload if method != "GET" else None, request_timeout=30,
        )
    except HTTPClientError as exc:
        response = exc.response
        assert response is not None, exc
    assert response is not None
    parsed: Any = None
    if response.headers.get("Content-Type", "").startswith("application/json"):
        parsed = orjson.loads(response.body)
    return response.code, response, parsed


async def until_logged(
    processes: list[WorkerProcess], message: str, count: int, timeout: float = 30.0
) -> None:
    """Wait until the processes have logged ``message`` ``count`` times in all."""
    async with asyncio.timeout(timeout):
        while sum(len(p.messages(message)) for p in processes) < count:
            await asyncio.wait([p.changed() for p in processes], return_when=asyncio.FIRST_COMPLETED)
