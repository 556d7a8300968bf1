"""Real edges for the JavaScript client's tests (clients/js/test), driven over stdin.

``python -m tests.clients.js_harness`` makes a vhost and a SQLite file of its own, prints
``{"ready": true}`` on a line, then answers each JSON request line on stdin with one JSON
line on stdout carrying the request's ``id`` and either ``"ok": true`` with the result
or ``"error"``. When stdin closes it stops its edges, deletes the vhost and exits.

Requests (``op``):

- ``edge`` ``{name, port?, settings?}``: start ``python -m services.ws_edge`` as edge
  ``name`` (port 0 picks one; a former edge's port brings up a new process there), with
  more ``WARREN_*`` settings; answers ``{port}`` once it is ready.
- ``kill`` ``{name}``: SIGKILL, as a crash; ``terminate`` ``{name}``: SIGTERM, as an
  orchestrator stops it (the edge closes its sockets with 1001); answers ``{code}``.
- ``token`` ``{user, groups?, roles?, ttl?}``: a token signed with the development key.
- ``publish`` ``{to, type?, data?, envelope_id?, sender?}``: one event through the one
  publish path (``warren.events``, or ``warren.events.kept`` for a kept type,
  docs/protocol.md 17.1); answers ``{envelope_id, ts}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aio_pika.abc import AbstractRobustConnection

from shared.auth import AuthSettings, TokenService
from shared.config import DEFAULT_AMQP_URL
from shared.messaging import Envelope, parse_destination, parse_sender
from shared.messaging.broker import Publisher, connect
from tests.support.edge import EdgeProcess, edge_env
from tests.support.rabbit import BrokerAdmin

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Harness:
    def __init__(self, amqp_url: str, database_url: str) -> None:
        self._amqp_url = amqp_url
        self._database_url = database_url
        self._tokens = TokenService(AuthSettings.from_env({}, development=True))
        self._edges: dict[str, EdgeProcess] = {}
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._handlers: dict[str, Handler] = {
            "edge": self.edge, "kill": self.kill, "terminate": self.terminate,
            "token": self.token, "publish": self.publish,
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(str(request.get("op")))
        if handler is None:
            raise ValueError(f"unknown op {request.get('op')!r}")
        return await handler(request)

    async def edge(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request["name"])
        old = self._edges.get(name)
        if old is not None and old.process is not None and old.process.returncode is None:
            raise ValueError(f"edge {name!r} is running")
        settings = {str(k): str(v) for k, v in dict(request.get("settings") or {}).items()}
        env = edge_env(self._amqp_url, self._database_url, **settings)
        env["WARREN_EDGE_PORT"] = str(int(request.get("port") or 0))
        edge = EdgeProcess(env)
        self._edges[name] = edge
        await edge.start()
        return {"port": edge.port}

    async def kill(self, request: dict[str, Any]) -> dict[str, Any]:
        edge = self._edges[str(request["name"])]
        await edge.kill()
        return {"code": edge.process.returncode if edge.process else None}

    async def terminate(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"code": await self._edges[str(request["name"])].terminate()}

    async def token(self, request: dict[str, Any]) -> dict[str, Any]:
        ttl = request.get("ttl")
        token = self._tokens.issue(
            str(request["user"]),
            tuple(request.get("groups") or ()),
            tuple(request.get("roles") or ()),
            ttl_s=int(ttl) if ttl is not None else None,
        )
        return {"token": token}

    async def publish(self, request: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if request.get("envelope_id") is not None:
            fields["id"] = str(request["envelope_id"])
        envelope = Envelope(
            type=str(request.get("type") or "message"),
            to=parse_destination(request["to"]),
            sender=parse_sender(request.get("sender") or "service:js-tests"),
            data=dict(request.get("data") or {}),
            **fields,
        )
        await (await self._open_publisher()).publish_event(envelope)
        return {"envelope_id": envelope.id, "ts": envelope.ts}

    async def _open_publisher(self) -> Publisher:
        if self._publisher is None:
            self._connection = await connect(self._amqp_url, name="warren-js-tests")
            self._publisher = await Publisher.open(self._connection)
        return self._publisher

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        for edge in self._edges.values():
            if edge.process is not None and edge.process.returncode is None:
                with contextlib.suppress(Exception):
                    await edge.terminate()
                await edge.kill()


async def serve(harness: Harness) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    def answer(message: dict[str, Any]) -> None:
        sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
        sys.stdout.flush()

    async def run(request: dict[str, Any]) -> None:
        try:
            answer({"id": request.get("id"), "ok": True, **await harness.handle(request)})
        except Exception as exc:  # every failure goes back to the test that asked
            answer({"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"})

    answer({"ready": True})
    while line := await reader.readline():
        task = asyncio.create_task(run(orjson.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)


async def main() -> None:
    admin = BrokerAdmin(
        amqp_url=os.environ.get("WARREN_AMQP_URL", DEFAULT_AMQP_URL),
        api_url=os.environ.get("WARREN_RABBITMQ_API_URL", "http://127.0.0.1:15672"),
    )
    vhost = admin.create_vhost("warren-js")
    scratch = Path(tempfile.mkdtemp(prefix="warren-js-"))
    harness = Harness(admin.vhost_url(vhost), f"sqlite:///{scratch / 'warren.db'}")
    try:
        await serve(harness)
    finally:
        await harness.close()
        admin.delete_vhost(vhost)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
