"""Cheshire Cat clients: v1 (WebSocket) and v2 (HTTP + server-sent events) behind one interface."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import replace

import httpx

from services.cat_relay.cat.base import CatClient, CatStatus, History, OnToken, Turn
from services.cat_relay.cat.errors import CatError, CatFailed, CatNoLlm, CatTimeout, CatUnavailable
from services.cat_relay.cat.v1 import V1Client
from services.cat_relay.cat.v2 import V2Client
from services.cat_relay.settings import CatProtocol, CatSettings

log = logging.getLogger(__name__)

V1_STATUS = "We're all mad here, dear!"

__all__ = [
    "CatClient",
    "CatError",
    "CatFailed",
    "CatNoLlm",
    "CatStatus",
    "CatTimeout",
    "CatUnavailable",
    "History",
    "Turn",
    "detect_protocol",
    "make_client",
]


async def detect_protocol(settings: CatSettings) -> CatProtocol:
    """Ask the Cat which protocol it speaks: ``GET /status`` (2.x), else ``GET /`` (1.x)."""
    async with httpx.AsyncClient(base_url=settings.url, timeout=settings.connect_timeout_s) as http:
        try:
            response = await http.get("/status")
            if response.status_code == 200:
                version = str(response.json().get("version", ""))
                if version.startswith("2"):
                    return CatProtocol.V2
            response = await http.get("/")
            if response.status_code == 200 and response.json().get("status") == V1_STATUS:
                return CatProtocol.V1
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise CatUnavailable(f"cannot reach the Cat at {settings.url}: {exc!r}") from exc
    raise CatFailed(f"{settings.url} does not look like a Cheshire Cat (no 1.x or 2.x status)")


def make_client(settings: CatSettings, blocking: Executor) -> CatClient:
    if settings.protocol is CatProtocol.V1:
        return V1Client(settings, blocking)
    if settings.protocol is CatProtocol.V2:
        return V2Client(settings)
    return DetectingClient(settings, blocking)


class DetectingClient:
    """Detects the protocol on first use (the Cat may start after the relay), then delegates."""

    def __init__(self, settings: CatSettings, blocking: Executor) -> None:
        self._settings = settings
        self._blocking = blocking
        self._client: CatClient | None = None
        self._lock = asyncio.Lock()

    @property
    def protocol(self) -> str:
        return self._client.protocol if self._client is not None else "auto"

    @property
    def keeps_history(self) -> bool:
        return self._client.keeps_history if self._client is not None else False

    @property
    def open_sockets(self) -> int:
        return self._client.open_sockets if self._client is not None else 0

    async def client(self) -> CatClient:
        async with self._lock:
            if self._client is None:
                protocol = await detect_protocol(self._settings)
                log.info("detected the Cat's protocol", extra={"protocol": protocol.value})
                self._client = make_client(replace(self._settings, protocol=protocol), self._blocking)
            return self._client

    async def ask(self, user_id: str, text: str, history: History, on_token: OnToken) -> str:
        return await (await self.client()).ask(user_id, text, history, on_token)

    async def release(self, user_id: str) -> None:
        if self._client is not None:
            await self._client.release(user_id)

    async def status(self) -> CatStatus:
        try:
            return await (await self.client()).status()
        except CatError as exc:
            return CatStatus(False, "auto", detail=exc.message)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

