"""What every Warren service process shares: its HTTP listener, and running until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Protocol

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from shared.config import ConfigError, Env, env_float, env_int, env_str

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Where a service serves ``/healthz``, ``/readyz``, ``/metrics`` and its own API."""

    host: str
    port: int
    shutdown_deadline_s: float

    @classmethod
    def from_env(cls, env: Env, prefix: str, default_port: int) -> HttpSettings:
        """Read ``WARREN_<PREFIX>_HOST``, ``_PORT`` (0: any free port) and ``_SHUTDOWN_DEADLINE_S``."""
        port = env_int(env, f"WARREN_{prefix}_PORT", default_port)
        if not 0 <= port < 65536:
            raise ConfigError(f"WARREN_{prefix}_PORT must be a TCP port (0: any free one), got {port}")
        return cls(
            host=env_str(env, f"WARREN_{prefix}_HOST", "0.0.0.0"),
            port=port,
            shutdown_deadline_s=env_float(env, f"WARREN_{prefix}_SHUTDOWN_DEADLINE_S", 10.0),
        )


def listen(app: tornado.web.Application, settings: HttpSettings) -> tuple[HTTPServer, int]:
    """Serve ``app`` on the configured address; return the server and the bound port."""
    sockets = bind_sockets(settings.port, settings.host, reuse_port=False)
    server = HTTPServer(app, xheaders=True, max_body_size=1 << 20, idle_connection_timeout=60)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signalled(service: Service, name: str) -> None:
    """Start ``service``, wait for SIGTERM or SIGINT, then stop it."""
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(f"{name} stopping")
    await service.stop()
