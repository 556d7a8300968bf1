"""The relay's Prometheus metrics, on an injected registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CAT_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OVERHEAD_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0
)


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.asks = Counter(
            "warren_relay_asks_total",
            "Asks this replica answered, by source (command: chat.ask; http: POST /send).",
            ["source"], registry=registry,
        )
        self.routed = Counter(
            "warren_relay_routed_total",
            "Asks this replica dispatched from chat.ask: answered here (local) or forwarded "
            "into the user's session queue (session).",
            ["route"], registry=registry,
        )
        self.replies = Counter(
            "warren_relay_replies_total", "Asks answered with a reply.", registry=registry
        )
        self.errors = Counter(
            "warren_relay_errors_total", "Asks answered with an error, by code.",
            ["code"], registry=registry,
        )
        self.token_batches = Counter(
            "warren_relay_token_batches_total", "chat.token events published.", registry=registry
        )
        self.cat_latency = Histogram(
            "warren_relay_cat_latency_seconds", "Time the Cat took to answer an ask.",
            buckets=CAT_LATENCY_BUCKETS, registry=registry,
        )
        self.overhead = Histogram(
            "warren_relay_overhead_seconds",
            "Time this replica spent on an answered ask besides the Cat: from receiving the ask "
            "to the broker confirming its chat.reply, minus the Cat's answer time.",
            buckets=OVERHEAD_BUCKETS, registry=registry,
        )
        self.cat_sockets = Gauge(
            "warren_relay_cat_sockets",
            "Open connections to the Cat (v1 sockets, v2 streams).",
            registry=registry,
        )
        self.sessions = Gauge(
            "warren_relay_sessions", "User sessions this replica consumes (owns or stands by for).",
            registry=registry,
        )

    def watch_cat_sockets(self, count: Callable[[], int]) -> None:
        self.cat_sockets.set_function(count)
