"""A vhost per test, through the management API when it answers, else rabbitmqctl."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from dataclasses import dataclass
from functools import cached_property

from aio_pika.abc import AbstractRobustConnection


@dataclass(frozen=True)
class BrokerAdmin:
    amqp_url: str
    api_url: str

    @property
    def _credentials(self) -> tuple[str, str]:
        parsed = urllib.parse.urlsplit(self.amqp_url)
        return parsed.username or "guest", parsed.password or "guest"

    def _api(self, method: str, path: str, body: bytes | None = None) -> bytes:
        user, password = self._credentials
        request = urllib.request.Request(
            self.api_url.rstrip("/") + path,
            data=body,
            method=method,
            headers={
                "Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode(),
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    @cached_property
    def api_available(self) -> bool:
        """Asked once: whether the management API answers."""
        try:
            self._api("GET", "/api/overview")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def vhost_url(self, vhost: str) -> str:
        parsed = urllib.parse.urlsplit(self.amqp_url)
        return urllib.parse.urlunsplit(parsed._replace(path="/" + urllib.parse.quote(vhost, safe="")))

    def create_vhost(self, prefix: str = "warren-test") -> str:
        vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
        user, _ = self._credentials
        quoted = urllib.parse.quote(vhost, safe="")
        if self.api_available:
            self._api("PUT", f"/api/vhosts/{quoted}")
            self._api(
                "PUT",
                f"/api/permissions/{quoted}/{user}",
                b'{"configure": ".*", "write": ".*", "read": ".*"}',
            )
        else:
            _ctl("add_vhost", vhost)
            _ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        return vhost

    def delete_vhost(self, vhost: str) -> None:
        if self.api_available:
            self._api("DELETE", f"/api/vhosts/{urllib.parse.quote(vhost, safe='')}")
        else:
            _ctl("delete_vhost", vhost)

    async def close_connections(self, vhost: str) -> None:
        """Force-close every client connection of ``vhost``, as a broker failure would."""
        await asyncio.to_thread(self._close_connections, vhost)

    def _close_connections(self, vhost: str) -> None:
        # rabbitmqctl acts at once; the management API lists connections only after
        # its next statistics interval, so it is the fallback for remote brokers.
        if shutil.which("rabbitmqctl") is not None:
            # Close exactly the connections open now, not the ones that reconnect
            # while rabbitmqctl is still at work.
            # list_connections takes no vhost (it ignores -p and lists the whole broker's):
            # filter here, or every other session's connections are closed too.
            listed = _ctl("list_connections", "--no-table-headers", "vhost", "pid")
            for line in listed.splitlines():
                owner, _, pid = line.partition("\t")
                if owner == vhost:
                    _ctl("close_connection", pid, "test: simulated connection loss")
            return
        quoted = urllib.parse.quote(vhost, safe="")
        for connection in json.loads(self._api("GET", f"/api/vhosts/{quoted}/connections")):
            name = urllib.parse.quote(connection["name"], safe="")
            self._api("DELETE", f"/api/connections/{name}")

    def delete_queue(self, vhost: str, queue: str) -> None:
        """Delete a queue as an operator can, even an exclusive one (which the management
        API refuses): with ``rabbitmqctl``, on the machine's broker."""
        _ctl("delete_queue", "-p", vhost, queue)

    def bindings(self, vhost: str, queue: str, source: str) -> set[str]:
        """Routing keys ``queue`` is bound with from the exchange ``source``."""
        if not self.api_available:
            raise RuntimeError("the management API is needed to list bindings")
        path = f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}/bindings"
        return {b["routing_key"] for b in json.loads(self._api("GET", path))
                if b["source"] == source}


def _ctl(*args: str) -> str:
    if shutil.which("rabbitmqctl") is None:
        raise RuntimeError("neither the management API nor rabbitmqctl is available")
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


def reconnected(connection: AbstractRobustConnection | None) -> asyncio.Future[None]:
    """Done the next time aio-pika's robust ``connection`` has reconnected."""
    assert connection is not None
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(*_args: object) -> None:
        if not future.done():
            future.set_result(None)

    connection.reconnect_callbacks.add(done)
    return future


async def depth(connection: AbstractRobustConnection, queue: str) -> int:
    """How many messages ``queue`` holds ready now."""
    channel = await connection.channel()
    async with channel:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
