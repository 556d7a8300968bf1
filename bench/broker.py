"""A throw-away RabbitMQ vhost for one bench run, through the management API."""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from dataclasses import dataclass

API_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class BrokerAdmin:
    amqp_url: str  # the broker's root URL; the vhost is put into it by vhost_url()
    api_url: str

    def _credentials(self) -> tuple[str, str]:
        parsed = urllib.parse.urlsplit(self.amqp_url)
        return parsed.username or "guest", parsed.password or "guest"

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        user, password = self._credentials()
        request = urllib.request.Request(
            self.api_url.rstrip("/") + path,
            data=body,
            method=method,
            headers={
                "Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode(),
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as response:
            return bytes(response.read())

    async def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        return await asyncio.to_thread(self._call, method, path, body)

    def vhost_url(self, vhost: str) -> str:
        parsed = urllib.parse.urlsplit(self.amqp_url)
        return urllib.parse.urlunsplit(parsed._replace(path="/" + _quote(vhost)))

    async def create_vhost(self) -> str:
        vhost = f"warren-bench-{uuid.uuid4().hex[:10]}"
        user, _ = self._credentials()
        await self.call("PUT", f"/api/vhosts/{_quote(vhost)}")
        await self.call(
            "PUT",
            f"/api/permissions/{_quote(vhost)}/{_quote(user)}",
            b'{"configure": ".*", "write": ".*", "read": ".*"}',
        )
        return vhost

    async def delete_vhost(self, vhost: str) -> None:
        await self.call("DELETE", f"/api/vhosts/{_quote(vhost)}")


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")
