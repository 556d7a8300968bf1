"""Everything the edge's handlers need, built once at start-up and passed down."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from shared.auth import TokenService
from shared.auth.current import KnownUsers
from shared.db import UserStore
from shared.db.batching import Batched
from shared.db.exports import ExportStore
from shared.db.keys import KeyStore
from shared.db.notifications import NotificationStore, PendingNotification
from shared.db.runs import RunStore
from shared.exports.settings import Limits
from shared.locks import KeyedLocks
from shared.messaging.broker import Publisher
from services.ws_edge.admission import AdmissionLookup
from services.ws_edge.bindings import BindingTable
from services.ws_edge.command_gate import CommandGate
from services.ws_edge.history import HistoryReader
from services.ws_edge.keepalive import Keepalive
from services.ws_edge.hub import Hub, TextFramer
from services.ws_edge.login_limits import LoginLimiter
from services.ws_edge.metrics import EdgeMetrics
from services.ws_edge.publishing import PublishLimiter, PublishSettings
from services.ws_edge.service_keys import ServiceKeys
from services.ws_edge.settings import EdgeSettings


@dataclass(frozen=True, slots=True)
class ExportsDeps:
    """What ``/api/exports`` and pending-notification delivery need (excel_worker's tables)."""

    store: ExportStore
    notifications: NotificationStore
    pending: Batched[str, Sequence[PendingNotification]]  # notifications.pending, in batches
    directory: Path
    limits: Limits
    replay_locks: KeyedLocks = field(default_factory=KeyedLocks)


@dataclass(frozen=True, slots=True)
class PublishDeps:
    """What ``POST /api/publish`` needs: the service keys and the per-key rate limit."""

    keys: ServiceKeys
    limiter: PublishLimiter

    @classmethod
    def build(
        cls, settings: PublishSettings, sessions: sessionmaker[Session], blocking: Executor
    ) -> PublishDeps:
        return cls(
            keys=ServiceKeys(KeyStore(sessions), blocking, settings.key_cache_s),
            limiter=PublishLimiter(settings.rate),
        )


@dataclass(frozen=True, slots=True)
class EdgeDeps:
    settings: EdgeSettings
    tokens: TokenService
    users: UserStore
    known_users: KnownUsers | None  # None: WARREN_EDGE_CHECK_USERS is off
    admission: AdmissionLookup  # what a socket's upgrade reads of its user
    publisher: Publisher
    hub: Hub
    bindings: BindingTable
    framer: TextFramer
    metrics: EdgeMetrics
    blocking: Executor
    is_ready: Callable[[], bool]
    login_limiter: LoginLimiter
    commands: CommandGate  # the catalogue: which command types a user may send
    publishing: PublishDeps
    history: HistoryReader  # the history stream: recoveries and history frames
    keepalive: Keepalive  # the heartbeat to every socket
    exports: ExportsDeps | None = None
    runs: RunStore | None = None  # the runner's runs table, for /api/runs
