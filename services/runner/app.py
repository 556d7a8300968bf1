"""The runner's HTTP application: liveness, readiness and metrics."""

from __future__ import annotations

from collections.abc import Callable

import tornado.web
from prometheus_client import CollectorRegistry

from shared.web import HealthHandler, MetricsHandler, ReadyHandler, log_request


def make_app(registry: CollectorRegistry, is_ready: Callable[[], bool]) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"is_ready": is_ready}),
            (r"/metrics", MetricsHandler, {"registry": registry}),
        ],
        log_function=log_request,
    )
