"""What every Warren service process shares: its event loop, its HTTP listener, its
garbage collector settings, and running until a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol

import tornado.web
import uvloop
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from shared.config import ConfigError, Env, env_float, env_int, env_str

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD: Final = 10_000  # allocations between young collections; CPython: 700


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
    # No xheaders: Tornado would take X-Forwarded-For from any client as its address.
    # These listeners serve probes, metrics and service keys, none of which needs the
    # address of a client behind a proxy.
    server = HTTPServer(app, max_body_size=1 << 20, idle_connection_timeout=60)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector out of the services' latency.

    A full collection walks every tracked object: tens of milliseconds in a service
    with its libraries loaded (30-67 ms measured in cat_relay), and more in an edge
    with a thousand sockets (about 100 objects each); in CPython 3.11 one runs whenever
    a quarter as many objects as there are long-lived ones have been promoted since the
    last. Messages make many short-lived objects; with a larger first generation they
    die before a collection sees them, so few are promoted and full collections are
    rare. What exists once the service has started (modules, classes, the app, its
    connections) lives as long as the process and is frozen out of every collection.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_service(main: Coroutine[Any, Any, None], *, on_uvloop: bool) -> None:
    """Run a service's ``main`` to the end, on uvloop or on asyncio's own loop.

    uvloop (libuv under asyncio's API) costs the edge 10-15 % less CPU per delivery and
    cat_relay 6-10 % less per ask, and took cat_relay's p99 overhead from about 5.4 to
    4.8 ms (bench/history/relay.md): those two run on it. The runner and the Excel worker keep
    asyncio's loop: they read their child processes' pipes through asyncio's subprocess
    transports, whose back-pressure they were built and tested on (on uvloop a run's
    output stopped arriving), and nothing they do waits on the loop's speed.
    """
    if on_uvloop:
        uvloop.run(main)
    else:
        asyncio.run(main)


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
    tune_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(f"{name} stopping")
    await service.stop()
