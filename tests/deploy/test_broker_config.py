"""The RabbitMQ that k8s/ deploys is configured as the cluster the tests run.

tests/support/cluster.py starts three nodes with ``NODE_CONFIG`` and RabbitMQ's
defaults otherwise (``quorum_cluster_size`` 3, streams on every node), and
tests/cluster/ checks Warren on them. A setting that production's ``RabbitmqCluster``
has and the tested nodes lack (or the reverse) is behaviour nobody checked: this fails
until the two agree again, or the setting is named below with the reason it may differ.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import HistorySettings
from tests.deploy.manifests import (
    OVERLAYS,
    WARREN_ENV_FILE,
    by_name,
    compose,
    env_file_keys,
    render,
)
from tests.support.cluster import CLUSTER_SIZE, NODE_CONFIG
from tests.support.private_broker import ERL_ARGS, PrivateBroker

CLUSTER = "warren-rabbitmq"
SERVICES = ("edge", "cat-relay", "runner", "excel-worker")
# Settings production may have that the tested nodes do not, and why that is safe.
UNTESTED_ON_PURPOSE = {
    # When the memory alarm blocks publishers: sized for the pod's limit (docs/deploy.md,
    # "Sizing"); the tests never come near either node's alarm.
    "vm_memory_high_watermark.relative",
}


def rabbitmq_conf(text: str) -> dict[str, str]:
    """``key = value`` lines of a rabbitmq.conf (comments and blank lines skipped)."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, sep, value = line.partition("=")
            assert sep, f"not key = value: {line!r}"
            settings[key.strip()] = value.strip()
    return settings


def rabbitmq_cluster(overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = by_name(render(overlay), "RabbitmqCluster")[CLUSTER]["spec"]
    return spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_nodes_run_the_configuration_the_cluster_tests_run(overlay: str) -> None:
    spec = rabbitmq_cluster(overlay)
    deployed = rabbitmq_conf(spec["rabbitmq"].get("additionalConfig", ""))
    tested = rabbitmq_conf(NODE_CONFIG)
    assert tested["cluster_partition_handling"] == "pause_minority"
    assert {k: deployed.get(k) for k in tested} == tested
    assert set(deployed) - set(tested) <= UNTESTED_ON_PURPOSE
    # advanced.config is where quorum_cluster_size and other Erlang terms would go: the
    # tested nodes have none, so their defaults are what was checked.
    assert not spec["rabbitmq"].get("advancedConfig"), "advanced.config is not what was tested"
    # rabbitmq-env.conf: the Erlang VM's flags, as every tested node has them.
    env = dict(
        line.split("=", 1) for line in spec["rabbitmq"].get("envConfig", "").splitlines()
        if line.strip()
    )
    assert env == {"SERVER_ADDITIONAL_ERL_ARGS": f'"{ERL_ARGS}"'}, env


def test_compose_runs_the_broker_with_the_tested_vm_flags() -> None:
    environment = compose()["services"]["rabbitmq"]["environment"]
    assert environment["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == ERL_ARGS


def test_the_tested_nodes_clock_follows_the_system_clock(private_broker: PrivateBroker) -> None:
    # The flags reach the VM through the Debian wrapper's environment.
    mode = private_broker.ctl("eval", "erlang:system_info(time_warp_mode).").strip()
    assert mode == "multi_time_warp"


def test_production_runs_as_many_nodes_as_the_tested_cluster() -> None:
    assert rabbitmq_cluster("prod")["replicas"] == CLUSTER_SIZE
    # The development overlay runs one node, as every test outside tests/cluster does.
    assert rabbitmq_cluster("dev")["replicas"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_image_is_pinned_and_the_same_as_compose(overlay: str) -> None:
    image = rabbitmq_cluster(overlay).get("image")
    assert image, "without an image the operator picks one that moves with its releases"
    assert image == compose()["services"]["rabbitmq"]["image"]
    # The tests' nodes are RabbitMQ 3 (the Debian package): so are the deployments'.
    assert image.split(":", 1)[1].startswith("3.")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_is_given_the_clusters_one_address(overlay: str) -> None:
    """As the cluster tests give services HAProxy's: one address, the load balancer."""
    deployments = by_name(render(overlay), "Deployment")
    for name in SERVICES:
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        url = env["WARREN_AMQP_URL"]["value"]
        assert "," not in url, name
        assert url.endswith(f"@{CLUSTER}:5672/"), (name, url)
        for part in ("RABBITMQ_USERNAME", "RABBITMQ_PASSWORD"):
            secret = env[part]["valueFrom"]["secretKeyRef"]
            assert secret["name"] == f"{CLUSTER}-default-user", (name, part)


def test_the_history_stream_is_declared_as_in_the_tests() -> None:
    """The stream's arguments are fixed when it is first declared (a policy changes them
    later): the deployments declare it with the retention the tests declare it with."""
    tested = HistorySettings()
    env = env_file_keys(WARREN_ENV_FILE)
    assert int(env["WARREN_HISTORY_MAX_AGE_S"]) == tested.max_age_s
    assert int(env["WARREN_HISTORY_MAX_BYTES"]) == tested.max_bytes
    assert int(env["WARREN_HISTORY_SEGMENT_BYTES"]) == tested.segment_bytes
