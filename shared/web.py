"""Tornado handlers every Warren service serves (liveness, readiness and metrics), and
the access log every service writes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson
import tornado.web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from tornado.log import access_log, app_log, gen_log


def access_log_level(handler: tornado.web.RequestHandler) -> int:
    """How loud a finished request is in the access log.

    - below 400: INFO, or DEBUG for a handler polled every second or so (the console's
      sets ``quiet_access_log``), so that it does not drown everything else;
    - 4xx: WARNING, the client's fault;
    - 503: WARNING. It is Warren's deliberate "not now, retry later" (the broker or the
      database away), whose cause is logged once where it changes; a readiness probe
      saying "not ready" (``expected_unavailable``) is doing its job: INFO;
    - any other 5xx: ERROR, a fault that needs a human.
    """
    status = handler.get_status()
    if status < 400:
        return logging.DEBUG if getattr(handler, "quiet_access_log", False) else logging.INFO
    if status == 503:
        expected = getattr(handler, "expected_unavailable", False)
        return logging.INFO if expected else logging.WARNING
    return logging.WARNING if status < 500 else logging.ERROR


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log (every service's ``log_function``), without the query string:
    it may carry a token."""
    request = handler.request
    access_log.log(
        access_log_level(handler),
        "%d %s %s",
        handler.get_status(),
        request.method,
        request.path,
        extra={"remote": request.remote_ip, "ms": round(1000 * request.request_time(), 2)},
    )


def log_uncaught(
    handler: tornado.web.RequestHandler, typ: type[BaseException] | None,
    value: BaseException | None, tb: TracebackType | None,
) -> None:
    """Tornado's ``log_exception``, naming the request by method and path only: the
    query string may carry a token (``?token=``), and Tornado's own version logs it."""
    request = handler.request
    where = {"method": request.method, "path": request.path}
    if isinstance(value, tornado.web.HTTPError):
        if value.log_message:
            gen_log.warning("%d %s", value.status_code, value.log_message, extra=where)
        return
    app_log.error("uncaught exception", extra=where, exc_info=(typ, value, tb))  # type: ignore[arg-type]


class JsonHandler(tornado.web.RequestHandler):
    """Answers in JSON, errors included: ``{"error": <code>, "message": <text>}``."""

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log_uncaught(self, typ, value, tb)

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

    expected_unavailable = True  # 503 is an answer here, not a failure (access_log_level)

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
