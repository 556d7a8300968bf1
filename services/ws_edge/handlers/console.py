"""The web console (docs/console.md): one static page, and three small JSON endpoints for it.

- ``/`` and ``/static/…``: the page, its scripts and styles, served with a strict
  Content-Security-Policy (scripts and styles from this origin only, no inline code).
- ``GET /api/console/catalog``: the jobs and reports the catalogue offers the caller,
  with their parameter schemas, to build the forms from (``GET /api/catalogue`` has them
  with the command types).
- ``GET /api/console/metrics``: this edge's key counters as JSON; the console derives
  rates from two readings. Prometheus (``/metrics``) stays the monitoring path.
- ``GET /api/console/cat``: whether the relays reach the Cat (their ``/readyz/cat``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import orjson
import tornado.web
from prometheus_client import CollectorRegistry
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from services.ws_edge.deps import EdgeDeps
from services.ws_edge.handlers.api import ApiHandler

STATIC_DIR: Final = Path(__file__).resolve().parents[1] / "static"
CONTENT_SECURITY_POLICY: Final = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",  # fetch, and the WebSocket to the same host
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
RELAY_TIMEOUT_S: Final = 3.0
# Metric family -> key in the JSON answer; labelled families are summed.
METRICS: Final = {
    "warren_edge_connections": "connections",
    "warren_edge_bindings": "bindings",
    "warren_edge_events_received": "events_received",
    "warren_edge_events_delivered": "events_delivered",
    "warren_edge_frames_accepted": "frames_accepted",
    "warren_edge_frames_refused": "frames_refused",
}


class ConsoleFileHandler(tornado.web.StaticFileHandler):
    """The page and its files; revalidated on every load (ETag), so an update shows at once."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-cache")


class CatalogHandler(ApiHandler):
    """The jobs and reports of the catalogue that the caller may use (services publish
    them: docs/protocol.md, the catalogue), in the shape the console's forms read."""

    def get(self) -> None:
        catalogue = self.deps.commands.catalogue_for(self.identity)
        self.write_json({"jobs": catalogue["jobs"], "reports": catalogue["reports"]})


class MetricsJsonHandler(ApiHandler):
    quiet_access_log = True  # every open console asks once a second

    def get(self) -> None:
        self.write_json({
            "edge": self.deps.settings.common.instance_id,
            "ts": time.time(),
            **edge_numbers(self.deps.metrics.registry),
        })


def edge_numbers(registry: CollectorRegistry) -> dict[str, float]:
    numbers = dict.fromkeys(METRICS.values(), 0.0)
    for family in registry.collect():
        key = METRICS.get(family.name)
        if key is not None:
            names = {family.name, f"{family.name}_total"}
            numbers[key] = sum(s.value for s in family.samples if s.name in names)
    return numbers


class CatStatusHandler(ApiHandler):
    """The first relay that answers speaks for all: they share one Cat."""

    quiet_access_log = True

    async def get(self) -> None:
        urls = self.deps.settings.relay_urls
        if not urls:
            self.write_json({"cat": "unknown", "detail": "WARREN_EDGE_RELAY_URLS is not set"})
            return
        client = AsyncHTTPClient()
        for url in urls:
            try:
                response = await client.fetch(
                    f"{url}/readyz/cat", request_timeout=RELAY_TIMEOUT_S, raise_error=False
                )
                status = orjson.loads(response.body)
            except (OSError, HTTPClientError, orjson.JSONDecodeError):
                continue
            if isinstance(status, dict) and status.get("cat") in {"reachable", "unreachable"}:
                self.write_json({k: status.get(k) for k in ("cat", "protocol", "version")})
                return
        self.write_json({"cat": "unknown", "detail": "no relay answered"})


Route = tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]


def console_routes(deps: EdgeDeps) -> list[Route]:
    api = {"deps": deps}
    return [
        (r"/()", ConsoleFileHandler, {"path": str(STATIC_DIR), "default_filename": "index.html"}),
        (r"/static/(.+)", ConsoleFileHandler, {"path": str(STATIC_DIR)}),
        (r"/api/console/catalog", CatalogHandler, api),
        (r"/api/console/metrics", MetricsJsonHandler, api),
        (r"/api/console/cat", CatStatusHandler, api),
    ]
