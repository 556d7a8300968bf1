"""The edge's Tornado application."""

from __future__ import annotations

import tornado.web

from shared.web import HealthHandler, MetricsHandler, ReadyHandler
from services.ws_edge.deps import EdgeDeps
from services.ws_edge.handlers.auth import LoginHandler
from services.ws_edge.handlers.websocket import EdgeSocket


def make_app(deps: EdgeDeps) -> tornado.web.Application:
    settings = deps.settings
    return tornado.web.Application(
        [
            (r"/ws", EdgeSocket, {"deps": deps}),
            (r"/auth/login", LoginHandler, {"deps": deps}),
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"is_ready": deps.is_ready}),
            (r"/metrics", MetricsHandler, {"registry": deps.metrics.registry}),
        ],
        websocket_ping_interval=settings.ping_interval_s or None,
        websocket_ping_timeout=settings.ping_timeout_s or None,
        websocket_max_message_size=settings.max_inbound_frame_bytes,
    )
