"""The edge's Tornado application."""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado import httputil

from shared.web import HealthHandler, MetricsHandler, ReadyHandler, log_request
from services.ws_edge.client_address import TrustedProxies
from services.ws_edge.deps import EdgeDeps
from services.ws_edge.handlers.auth import LoginHandler
from services.ws_edge.handlers.catalogue import CatalogueHandler
from services.ws_edge.handlers.client import client_routes
from services.ws_edge.handlers.console import console_routes
from services.ws_edge.handlers.exports import (
    ExportFileHandler,
    ExportListHandler,
    ExportStatusHandler,
)
from services.ws_edge.handlers.publish import PublishBatchHandler, PublishHandler
from services.ws_edge.handlers.runs import RunListHandler, RunStatusHandler
from services.ws_edge.handlers.websocket import EdgeSocket
from services.ws_edge.shedding import WS_PATH


class EdgeApplication(tornado.web.Application):
    """Tornado's application, with ``request.remote_ip`` set to the client's address
    (services/ws_edge/client_address.py) before any handler, the access log or Tornado's
    own error log reads it."""

    def __init__(self, proxies: TrustedProxies, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proxies = proxies

    def find_handler(
        self, request: httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.web._HandlerDelegate:
        request.remote_ip = self._proxies.client_address(request.remote_ip, request.headers)
        return super().find_handler(request, **kwargs)


def make_app(deps: EdgeDeps) -> tornado.web.Application:
    settings = deps.settings
    return EdgeApplication(
        settings.trusted_proxies,
        [
            (WS_PATH, EdgeSocket, {"deps": deps}),
            (r"/auth/login", LoginHandler, {"deps": deps}),
            (r"/api/exports", ExportListHandler, {"deps": deps}),
            (r"/api/exports/([^/]+)", ExportStatusHandler, {"deps": deps}),
            (r"/api/exports/([^/]+)/file", ExportFileHandler, {"deps": deps}),
            (r"/api/publish", PublishHandler, {"deps": deps}),
            (r"/api/publish/batch", PublishBatchHandler, {"deps": deps}),
            (r"/api/catalogue", CatalogueHandler, {"deps": deps}),
            (r"/api/runs", RunListHandler, {"deps": deps}),
            (r"/api/runs/([^/]+)", RunStatusHandler, {"deps": deps}),
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"is_ready": deps.is_ready}),
            (r"/metrics", MetricsHandler, {"registry": deps.metrics.registry}),
            *console_routes(deps),
            *client_routes(),
        ],
        # The heartbeat comes from services/ws_edge/keepalive.py, not from a Tornado
        # task per connection.
        websocket_max_message_size=settings.max_inbound_frame_bytes,
        log_function=log_request,
    )
