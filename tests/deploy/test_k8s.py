"""The rendered kustomize overlays: valid Kubernetes, and the shape every service needs."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest

from shared.messaging.names import RUNNER_RUNS_QUEUE, Command, work_queue_name
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.manifests import OVERLAYS, Manifest, by_name, of_kind, render

KUBERNETES_VERSION = "1.30.0"
SERVICES = ("edge", "cat-relay", "runner", "excel-worker")
# The queue whose depth means "more replicas needed", for each command service.
SCALED_QUEUES = {
    "cat-relay": work_queue_name(Command.CHAT_ASK),
    "runner": RUNNER_RUNS_QUEUE,  # runs waiting for a free slot
    "excel-worker": work_queue_name(Command.EXCEL_CREATE),
}


@pytest.fixture(params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> tuple[Manifest, ...]:
    return render(request.param)


def test_built_in_kinds_pass_strict_schema_validation(manifests: tuple[Manifest, ...]) -> None:
    checked = 0
    for manifest in manifests:
        if manifest["kind"] in SCHEMAS:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 15


def test_custom_resources_match_their_schemas(manifests: tuple[Manifest, ...]) -> None:
    kinds = {m["kind"] for m in manifests}
    assert set(SCHEMAS) <= kinds, f"missing custom resources: {set(SCHEMAS) - kinds}"
    for manifest in manifests:
        schema = SCHEMAS.get(manifest["kind"])
        if schema is not None:
            jsonschema.validate(manifest, schema)


def test_every_service_has_probes_limits_and_a_locked_down_pod(
    manifests: tuple[Manifest, ...],
) -> None:
    deployments = by_name(manifests, "Deployment")
    assert set(SERVICES) <= set(deployments)
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert container["args"] == [name], name


def test_grace_periods_cover_each_drain_deadline(manifests: tuple[Manifest, ...]) -> None:
    config = _config_map(manifests)
    deadlines = {
        "edge": "WARREN_EDGE_SHUTDOWN_DEADLINE_S",
        "cat-relay": "WARREN_RELAY_SHUTDOWN_DEADLINE_S",
        "runner": "WARREN_RUNNER_SHUTDOWN_DEADLINE_S",
        "excel-worker": "WARREN_EXCEL_SHUTDOWN_DEADLINE_S",
    }
    deployments = by_name(manifests, "Deployment")
    for name, variable in deadlines.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        pause = float(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] >= pause + float(config[variable]) + 5, name


def test_each_service_is_exposed_monitored_and_protected(manifests: tuple[Manifest, ...]) -> None:
    services, monitors, budgets = (
        by_name(manifests, "Service"), by_name(manifests, "PodMonitor"),
        by_name(manifests, "PodDisruptionBudget"),
    )
    deployments = by_name(manifests, "Deployment")
    for name in SERVICES:
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        for selecting in (services[name]["spec"]["selector"],
                          monitors[name]["spec"]["selector"]["matchLabels"],
                          budgets[name]["spec"]["selector"]["matchLabels"]):
            assert selecting.items() <= labels.items(), name
        assert monitors[name]["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_scaling_targets_exist_and_watch_the_real_work_queues(
    manifests: tuple[Manifest, ...],
) -> None:
    deployments = by_name(manifests, "Deployment")
    scaled = by_name(manifests, "ScaledObject")
    assert set(scaled) == set(SCALED_QUEUES)
    for name, queue in SCALED_QUEUES.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == queue
        assert trigger["authenticationRef"]["name"] in by_name(manifests, "TriggerAuthentication")
    (hpa,) = of_kind(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "edge"
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}


def test_ingress_keeps_websockets_open_without_affinity(manifests: tuple[Manifest, ...]) -> None:
    (ingress,) = of_kind(manifests, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert not any("affinity" in key for key in annotations)
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "edge"


def test_production_commits_no_secret_and_development_says_so() -> None:
    assert of_kind(render("prod"), "Secret") == []
    dev_config = _config_map(render("dev"))
    assert dev_config["WARREN_ENV"] == "development"
    assert _config_map(render("prod"))["WARREN_ENV"] == "production"


def _config_map(manifests: tuple[Manifest, ...]) -> dict[str, str]:
    (config,) = [m for m in of_kind(manifests, "ConfigMap")
                 if m["metadata"]["name"].startswith("warren-config")]
    data: dict[str, str] = config["data"]
    return data
