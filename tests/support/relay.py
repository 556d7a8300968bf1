"""Relays for tests (in this process or as an OS process) with a Cat v1 double, and a chat
client that follows one ask to its answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.cat_relay.server import RelayServer
from services.cat_relay.settings import RelaySettings
from services.ws_edge.server import EdgeServer
from tests.support.cat_v1 import CatV1Double
from tests.support.client import Client
from tests.support.service_process import ServiceProcess


SERVICE_KEY = "relay-test-service-key-0123456789"


def relay_env(amqp_url: str, database_url: str, cat_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": database_url,
        "WARREN_CAT_URL": cat_url,
        "WARREN_CAT_PROTOCOL": "v1",
        "WARREN_CAT_TIMEOUT_S": "10",
        "WARREN_CAT_CONNECT_TIMEOUT_S": "1",
        "WARREN_RELAY_HOST": "127.0.0.1",
        "WARREN_RELAY_PORT": "0",
        "WARREN_RELAY_API_KEY": SERVICE_KEY,
        "WARREN_RELAY_TOKEN_FLUSH_S": "0.005",
        "WARREN_RELAY_SHUTDOWN_DEADLINE_S": "5",
        "WARREN_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


class Chat:
    """A WebSocket client that asks and collects every frame of each ask's answer."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.frames: list[dict[str, Any]] = []

    async def ask(self, text: str | None, ref: str = "q") -> str:
        """Send ``chat.ask``; return the ask id from the ``ack``."""
        data: dict[str, Any] = {} if text is None else {"text": text}
        await self.client.send({"type": "chat.ask", "ref": ref, "data": data})
        while True:
            frame = await self.client.recv()
            if frame.get("type") in {"ack", "error"} and "v" not in frame and frame.get("ref") == ref:
                assert frame["type"] == "ack", frame
                return str(frame["data"]["id"])
            self.frames.append(frame)

    async def outcome(self, ask_id: str, timeout: float = 15.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The ``chat.token`` events and the final ``chat.reply``/``chat.error`` of one ask."""
        tokens: list[dict[str, Any]] = []
        pending = list(self.frames)
        self.frames.clear()
        while True:
            frame = pending.pop(0) if pending else await self.client.recv(timeout)
            data = frame.get("data", {})
            if "v" not in frame or data.get("ask_id") != ask_id:
                self.frames.append(frame)
                continue
            if frame["type"] == "chat.token":
                tokens.append(frame)
            else:
                self.frames.extend(pending)
                return tokens, frame


class RelayProcess(ServiceProcess):
    """``python -m services.cat_relay`` in a child process (tests/support/service_process.py)."""

    module = "services.cat_relay"
    ready_message = "cat_relay ready"


@pytest.fixture
async def cat() -> AsyncIterator[CatV1Double]:
    double = CatV1Double().start()
    yield double
    double.hold.set()
    await double.stop()


@pytest.fixture
async def make_relay(
    amqp_url: str, database_url: str, cat: CatV1Double
) -> AsyncIterator[Callable[..., RelayServer]]:
    built: list[RelayServer] = []

    def build(**overrides: str) -> RelayServer:
        settings = RelaySettings.from_env(relay_env(amqp_url, database_url, cat.url, **overrides))
        server = RelayServer(settings, CollectorRegistry())
        built.append(server)
        return server

    yield build
    cat.hold.set()
    for server in built:
        await server.stop()


async def chat_for(edge: EdgeServer, token: str) -> Chat:
    return Chat(await Client.connect(edge.port, token))
