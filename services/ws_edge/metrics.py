"""The edge's Prometheus metrics, on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.messaging import Kind

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connections = Gauge(
            "warren_edge_connections", "Open WebSocket connections.", registry=registry
        )
        self.handshakes_refused = Counter(
            "warren_edge_handshakes_refused_total",
            "WebSocket upgrades refused before the handshake, by reason.",
            ["reason"],
            registry=registry,
        )
        delivered = Counter(
            "warren_edge_events_delivered_total",
            "Event frames written to sockets, by destination kind.",
            ["kind"],
            registry=registry,
        )
        received = Counter(
            "warren_edge_events_received_total",
            "Events consumed from the broker, by destination kind.",
            ["kind"],
            registry=registry,
        )
        # Label children are resolved once: the fan-out path only calls inc().
        self.delivered: dict[Kind, Counter] = {
            k: delivered.labels(k.value) for k in Kind if k is not Kind.SERVICE
        }
        self.received: dict[Kind, Counter] = {
            k: received.labels(k.value) for k in Kind if k is not Kind.SERVICE
        }
        self.events_rejected = Counter(
            "warren_edge_events_rejected_total",
            "Broker messages that were not valid envelopes and were dead-lettered.",
            registry=registry,
        )
        self.frames_refused = Counter(
            "warren_edge_frames_refused_total",
            "Client frames answered with an error, by reason.",
            ["reason"],
            registry=registry,
        )
        self.frames_accepted = Counter(
            "warren_edge_frames_accepted_total",
            "Client frames accepted, by type.",
            ["type"],
            registry=registry,
        )
        self.latency = Histogram(
            "warren_edge_delivery_latency_seconds",
            "Time from an event's publish timestamp to its write to the local sockets.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.closed = Counter(
            "warren_edge_closes_total",
            "Connections closed by the edge, by close code.",
            ["code"],
            registry=registry,
        )
        self.slow_disconnects = Counter(
            "warren_edge_slow_client_disconnects_total",
            "Connections closed because the client stopped reading.",
            registry=registry,
        )
        self.bindings = Gauge(
            "warren_edge_bindings",
            "Routing keys bound to this edge's queue (broadcast included).",
            registry=registry,
        )
        self.logins = Counter(
            "warren_edge_logins_total", "Login attempts, by outcome.", ["outcome"], registry=registry
        )
        downloads = Counter(
            "warren_edge_export_downloads_total",
            "Export files streamed, by outcome: complete (every byte written), or "
            "client_closed (the client went away before the end of the file).",
            ["outcome"],
            registry=registry,
        )
        self.downloads_complete = downloads.labels("complete")
        self.downloads_client_closed = downloads.labels("client_closed")
        self.history_passes = Counter(
            "warren_edge_history_passes_total",
            "Passes over the history stream; each serves every recovery and history "
            "request that was waiting when it started.",
            registry=registry,
        )
        self.history_settled_passes = Counter(
            "warren_edge_history_settled_passes_total",
            "Passes over the history stream that waited for writes the stream may have "
            "held back while electing a leader, and read up to a second marker.",
            registry=registry,
        )
        self.history_pass_seconds = Histogram(
            "warren_edge_history_pass_seconds",
            "How long a pass over the history stream took, marker to marker.",
            buckets=LATENCY_BUCKETS + (5.0, 10.0, 30.0),
            registry=registry,
        )
        self.history_replayed = Counter(
            "warren_edge_history_replayed_total",
            "Events read from the history stream and written to recovering sockets "
            "(counted once per event, however many sockets took it).",
            registry=registry,
        )
        self.recoveries = Counter(
            "warren_edge_recoveries_total",
            "Connections that asked to recover (?since=), by outcome: recovered, too_old, "
            "invalid_position, history_off, failed.",
            ["outcome"],
            registry=registry,
        )
        self.inband_recoveries = Counter(
            "warren_edge_inband_recoveries_total",
            "Open sockets to which the edge replayed, in band, what was routed while its "
            "broker connection was away, by outcome: recovered, too_old, history_off, "
            "failed (closed with 1013).",
            ["outcome"],
            registry=registry,
        )
        self.history_requests = Counter(
            "warren_edge_history_requests_total",
            "history frames answered from the stream.",
            registry=registry,
        )
