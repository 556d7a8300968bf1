"""Tornado handlers every Warren service serves: liveness, readiness and metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import tornado.web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class JsonHandler(tornado.web.RequestHandler):
    """Answers in JSON, errors included: ``{"error": <code>, "message": <text>}``."""

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("error", "http_error")
        message = kwargs.get("message") or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"error": error, "message": message}))

    def fail(self, status: int, error: str, message: str) -> None:
        self.set_status(status)
        self.write_error(status, error=error, message=message)


class HealthHandler(JsonHandler):
    """Liveness: the process answers."""

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(JsonHandler):
    """Readiness: 200 while ``is_ready()`` holds, 503 otherwise."""

    def initialize(self, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready

    def get(self) -> None:
        if self._is_ready():
            self.write_json({"status": "ready"})
        else:
            self.write_json({"status": "not_ready"}, status=503)


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self._registry))
