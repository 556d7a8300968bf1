"""The relay's Tornado application: ``POST /send`` and the service endpoints."""

from __future__ import annotations

from collections.abc import Callable

import tornado.web

from shared.auth import TokenService
from shared.auth.current import KnownUsers
from shared.web import HealthHandler, MetricsHandler, ReadyHandler, log_request
from services.cat_relay.asker import Asker
from services.cat_relay.cat import CatClient
from services.cat_relay.handlers.send import CatStatusHandler, SendHandler
from services.cat_relay.metrics import RelayMetrics
from services.cat_relay.settings import RelaySettings


def make_app(
    settings: RelaySettings,
    asker: Asker,
    cat: CatClient,
    tokens: TokenService,
    users: KnownUsers | None,
    metrics: RelayMetrics,
    is_ready: Callable[[], bool],
) -> tornado.web.Application:
    send = {
        "asker": asker, "tokens": tokens, "settings": settings, "users": users,
    }
    return tornado.web.Application(
        [
            (r"/send", SendHandler, send),
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"is_ready": is_ready}),
            (r"/readyz/cat", CatStatusHandler, {"cat": cat}),
            (r"/metrics", MetricsHandler, {"registry": metrics.registry}),
        ],
        log_function=log_request,
    )
