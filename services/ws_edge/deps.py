"""Everything the edge's handlers need, built once at start-up and passed down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from shared.auth import TokenService
from shared.db import UserStore
from shared.messaging.broker import Publisher
from services.ws_edge.bindings import BindingTable
from services.ws_edge.hub import Hub, TextFramer
from services.ws_edge.login_limits import LoginLimiter
from services.ws_edge.metrics import EdgeMetrics
from services.ws_edge.settings import EdgeSettings
from shared.exports.settings import Limits
from shared.db.exports import ExportStore
from shared.db.notifications import NotificationStore
from shared.db.runs import RunStore


class KeyedLocks:
    """One asyncio lock per key (a user), dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(frozen=True, slots=True)
class ExportsDeps:
    """What ``/api/exports`` and pending-notification delivery need (excel_worker's tables)."""

    store: ExportStore
    notifications: NotificationStore
    directory: Path
    limits: Limits
    replay_locks: KeyedLocks = field(default_factory=lambda: KeyedLocks())


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
    login_limiter: LoginLimiter
    exports: ExportsDeps | None = None
    runs: RunStore | None = None  # the runner's runs table, for /api/runs
