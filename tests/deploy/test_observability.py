"""Alerts and the dashboard only use metrics that exist: Warren's from the code,
RabbitMQ's from a real node's Prometheus endpoints."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator

import pika
import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.cat_relay.metrics import RelayMetrics
from services.excel_worker.metrics import ExcelMetrics
from services.runner.metrics import RunnerMetrics
from services.ws_edge.metrics import EdgeMetrics
from tests.deploy.manifests import ROOT, by_name, render
from tests.support.private_broker import PrivateBroker

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "warren.json"
COMPOSE_ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# From kube-state-metrics and Prometheus itself, which every Prometheus Operator
# installation (kube-prometheus) has.
EXTERNAL = {"kube_pod_status_ready", "up"}
PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "rate", "increase", "delta", "histogram_quantile", "by",
    "without", "count", "irate", "abs", "clamp_min", "topk",
}
QUEUE = "warren.cmd.test"
DETAILED = "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count"
STATISTICS_DEADLINE_S = 30
METRIC = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(\{[^}]*\})?")
SELECTOR_LABEL = re.compile(r"([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)")


def _registries() -> dict[str, set[str]]:
    """Sample names (``_total``, ``_bucket``... included) to the label names they carry."""
    registry = CollectorRegistry()
    for metrics in (EdgeMetrics, RelayMetrics, RunnerMetrics, ExcelMetrics):
        metrics(registry)
    samples: dict[str, set[str]] = {}
    # A labelled metric with no children yet has no samples to read its labels from, so
    # they come from the collector (prometheus_client keeps them in ``_labelnames``).
    for name, collector in registry._names_to_collectors.items():  # noqa: SLF001
        labels = set(getattr(collector, "_labelnames", ()))
        samples[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return samples


def _expressions() -> Iterator[tuple[str, str]]:
    for overlay in ("dev", "prod"):
        rule = by_name(render(overlay), "PrometheusRule")["warren"]
        for group in rule["spec"]["groups"]:
            for item in group["rules"]:
                yield f"{overlay}:{item['alert']}", item["expr"]
    for group in yaml.safe_load(COMPOSE_ALERTS.read_text())["groups"]:
        for item in group["rules"]:
            yield f"compose:{item['alert']}", item["expr"]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            yield f"dashboard:{panel['title']}", target["expr"]


def _metrics_in(expr: str) -> Iterator[tuple[str, set[str]]]:
    # Metric names, with the label names of their selector; quoted text is left out first.
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for name, selector in METRIC.findall(unquoted):
        if name in PROMQL_FUNCTIONS or name in {"le", "queue", "kind", "status"}:
            continue
        if "_" not in name and name not in EXTERNAL:
            continue
        yield name, set(SELECTOR_LABEL.findall(selector or ""))


@pytest.fixture(scope="module")
def rabbitmq_metrics(private_broker: PrivateBroker) -> set[str]:
    """Metric names a real RabbitMQ serves on the endpoints Prometheus scrapes."""
    vhost = private_broker.create_vhost("warren-metrics")
    try:
        # A queue must exist for the per-queue families to list their metrics.
        connection = pika.BlockingConnection(pika.URLParameters(private_broker.vhost_url(vhost)))
        connection.channel().queue_declare(QUEUE, durable=True)
        connection.close()
        names = _scraped(private_broker, "/metrics")
        # A new queue reports its figures at the node's next statistics tick (every
        # 5 s by default), and RabbitMQ offers no event to wait for: ask again until
        # the queue is listed, within a deadline.
        deadline = time.monotonic() + STATISTICS_DEADLINE_S
        while True:
            detailed = _scraped(private_broker, DETAILED, queue=QUEUE)
            if detailed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert detailed, f"RabbitMQ listed no per-queue metrics for {QUEUE} within {STATISTICS_DEADLINE_S} s"
        return names | detailed
    finally:
        private_broker.delete_vhost(vhost)


def _scraped(broker: PrivateBroker, path: str, queue: str | None = None) -> set[str]:
    """The sample names at ``path``; with ``queue``, only if some sample names that queue."""
    with urllib.request.urlopen(broker.prometheus_url + path, timeout=10) as response:
        lines = [line for line in response.read().decode().splitlines()
                 if line and not line.startswith("#")]
    if queue is not None and not any(f'queue="{queue}"' in line for line in lines):
        return set()
    return {line.split("{")[0].split(" ")[0] for line in lines}


def test_alerts_and_dashboard_use_only_metrics_that_exist(rabbitmq_metrics: set[str]) -> None:
    warren = _registries()
    checked = 0
    for where, expr in _expressions():
        for name, labels in _metrics_in(expr):
            checked += 1
            if name.startswith("warren_"):
                assert name in warren, f"{where}: {name} is not a metric any service defines"
                assert labels <= warren[name], f"{where}: {name} has no label {labels - warren[name]}"
            elif name.startswith("rabbitmq_"):
                assert name in rabbitmq_metrics, f"{where}: RabbitMQ serves no {name}"
            else:
                assert name in EXTERNAL, f"{where}: unknown metric {name}"
    assert checked >= 40


def test_every_warren_metric_follows_the_naming_conventions() -> None:
    for name in _registries():
        assert re.fullmatch(r"warren_(edge|relay|runner|excel)_[a-z0-9_]+", name), name
        if name.endswith(("_seconds", "_seconds_bucket", "_seconds_count", "_seconds_sum")):
            continue
        assert not re.search(r"_(ms|millis|secs?)($|_)", name), f"{name}: use base units"


def test_dashboard_covers_each_area_the_issue_names() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for needle in ("warren_edge_connections", "warren_edge_events_delivered_total",
                   "warren_edge_delivery_latency_seconds_bucket", "rabbitmq_detailed_queue_messages",
                   "warren_runner_runs_finished_total", "warren_excel_tasks_total",
                   "warren_relay_cat_latency_seconds_bucket", "warren_relay_errors_total"):
        assert needle in exprs, needle


def test_compose_and_kubernetes_raise_the_same_alerts() -> None:
    kube = {item["alert"] for group in by_name(render("prod"), "PrometheusRule")["warren"]["spec"]["groups"]
            for item in group["rules"]}
    composed = {item["alert"] for group in yaml.safe_load(COMPOSE_ALERTS.read_text())["groups"]
                for item in group["rules"]}
    assert kube == composed == {
        "WarrenEdgeNotReady", "WarrenDeadLetterQueueGrowing", "WarrenExportFailures",
        "WarrenSlowClientDisconnects", "WarrenWorkQueueWithoutConsumer",
    }
