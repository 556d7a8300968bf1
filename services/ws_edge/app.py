"""The edge's Tornado application."""

from __future__ import annotations

import logging

import tornado.web
from tornado.log import access_log

from shared.web import HealthHandler, MetricsHandler, ReadyHandler
from services.ws_edge.deps import EdgeDeps
from services.ws_edge.handlers.auth import LoginHandler
from services.ws_edge.handlers.console import console_routes
from services.ws_edge.handlers.exports import (
    ExportFileHandler,
    ExportListHandler,
    ExportStatusHandler,
)
from services.ws_edge.handlers.runs import RunListHandler, RunStatusHandler
from services.ws_edge.handlers.websocket import EdgeSocket
from services.ws_edge.shedding import WS_PATH


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log, without the query string: it may carry a token.

    Handlers polled every second or so (the console's) set ``quiet_access_log``: their
    successful requests are logged at DEBUG, so they do not drown everything else.
    """
    request = handler.request
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if status < 400 and getattr(handler, "quiet_access_log", False):
        level = logging.DEBUG
    access_log.log(
        level,
        "%d %s %s",
        status,
        request.method,
        request.path,
        extra={"remote": request.remote_ip, "ms": round(1000 * request.request_time(), 2)},
    )


def make_app(deps: EdgeDeps) -> tornado.web.Application:
    settings = deps.settings
    return tornado.web.Application(
        [
            (WS_PATH, EdgeSocket, {"deps": deps}),
            (r"/auth/login", LoginHandler, {"deps": deps}),
            (r"/api/exports", ExportListHandler, {"deps": deps}),
            (r"/api/exports/([^/]+)", ExportStatusHandler, {"deps": deps}),
            (r"/api/exports/([^/]+)/file", ExportFileHandler, {"deps": deps}),
            (r"/api/runs", RunListHandler, {"deps": deps}),
            (r"/api/runs/([^/]+)", RunStatusHandler, {"deps": deps}),
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"is_ready": deps.is_ready}),
            (r"/metrics", MetricsHandler, {"registry": deps.metrics.registry}),
            *console_routes(deps),
        ],
        # Keepalive pings come from services/ws_edge/keepalive.py, not from a Tornado
        # task per connection.
        websocket_max_message_size=settings.max_inbound_frame_bytes,
        log_function=log_request,
    )
