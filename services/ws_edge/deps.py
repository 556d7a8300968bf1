"""Everything the edge's handlers need, built once at start-up and passed down."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from shared.auth import TokenService
from shared.db import UserStore
from shared.messaging.broker import Publisher
from services.ws_edge.bindings import BindingTable
from services.ws_edge.hub import Hub, TextFramer
from services.ws_edge.metrics import EdgeMetrics
from services.ws_edge.settings import EdgeSettings


@dataclass(frozen=True, slots=True)
class EdgeDeps:
    settings: EdgeSettings
    tokens: TokenService
    users: UserStore
    publisher: Publisher
    hub: Hub
    bindings: BindingTable
    framer: TextFramer
    metrics: EdgeMetrics
    blocking: Executor
    is_ready: Callable[[], bool]
