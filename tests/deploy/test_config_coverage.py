"""Every variable a service reads is set in compose and in the k8s config, and no other.

The names come from the services themselves: each settings class reads its
environment through a mapping, so reading from a recording mapping lists every
variable it looks at (including the ``_FILE`` variants of secrets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.cat_relay.settings import RelaySettings
from services.excel_worker.settings import ExcelSettings
from services.runner.settings import RunnerSettings
from services.ws_edge.settings import EdgeSettings
from tests.deploy.manifests import WARREN_ENV_FILE, compose, env_file_keys, render

SETTINGS: dict[str, Callable[[Any], object]] = {
    "edge": EdgeSettings.from_env,
    "cat_relay": RelaySettings.from_env,
    "runner": RunnerSettings.from_env,
    "excel_worker": ExcelSettings.from_env,
}
# Read by a process but never configured by a deployment: each pod's own identity, and
# where a secret can be mounted as a file instead of set as a variable.
# Test knobs that settings refuse outside WARREN_ENV=development belong in no deployment.
NOT_DEPLOYMENT_SETTINGS = {"WARREN_INSTANCE_ID", "PATH", "WARREN_EXCEL_TEST_ROW_DELAY_S"}
# The secrets: set from .env (compose) or the warren-secrets Secret and the RabbitMQ
# operator's Secret (k8s), never in the shared settings file.
SECRETS = {
    "WARREN_AMQP_URL", "WARREN_DATABASE_URL", "WARREN_JWT_SECRET", "WARREN_CAT_API_KEY",
    "WARREN_RELAY_API_KEY",
}
# Only read with WARREN_JWT_ALGORITHM=RS256, which a deployment opts into.
RS256_ONLY = {"WARREN_JWT_PUBLIC_KEY", "WARREN_JWT_PRIVATE_KEY"}


class RecordingEnv(dict[str, str]):
    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)


def _public_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def read_by(service: str) -> set[str]:
    names: set[str] = set()
    for extra in ({}, {"WARREN_JWT_ALGORITHM": "RS256", "WARREN_JWT_PUBLIC_KEY": _public_key()}):
        env = RecordingEnv({"WARREN_ENV": "development", **extra})
        SETTINGS[service](env)
        names |= env.read
    return {name for name in names if not name.endswith("_FILE")}


@pytest.fixture(scope="module")
def all_read() -> set[str]:
    return set().union(*(read_by(service) for service in SETTINGS))


def deployment_settings(all_read: set[str]) -> set[str]:
    return all_read - NOT_DEPLOYMENT_SETTINGS - SECRETS - RS256_ONLY


def test_the_recording_sees_what_services_read(all_read: set[str]) -> None:
    # A sanity check of the method itself: names every service reads, and per-service ones.
    assert {"WARREN_AMQP_URL", "WARREN_EDGE_PORT", "WARREN_RUNNER_MAX_WALL_S"} <= all_read
    assert {"WARREN_RELAY_PORT", "WARREN_EXCEL_PORT"} <= all_read


def test_shared_settings_file_sets_every_variable_and_nothing_stale(all_read: set[str]) -> None:
    configured = set(env_file_keys(WARREN_ENV_FILE))
    expected = deployment_settings(all_read)
    assert not expected - configured, f"read by a service but not in warren.env: {sorted(expected - configured)}"
    assert not configured - expected, f"in warren.env but read by no service: {sorted(configured - expected)}"
    assert not configured & SECRETS


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_compose_gives_each_service_all_it_reads(service: str) -> None:
    definition = compose()["services"][service]
    assert definition["env_file"] == ["k8s/base/warren.env"]
    given = set(env_file_keys(WARREN_ENV_FILE)) | set(definition["environment"])
    missing = read_by(service) - NOT_DEPLOYMENT_SETTINGS - RS256_ONLY - given
    assert not missing, f"{service} reads {sorted(missing)}, which compose does not set"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kubernetes_gives_each_service_all_it_reads(overlay: str, all_read: set[str]) -> None:
    manifests = render(overlay)
    config = next(m for m in manifests if m["kind"] == "ConfigMap"
                  and m["metadata"]["name"].startswith("warren-config"))
    for deployment in (m for m in manifests if m["kind"] == "Deployment"
                       and m["metadata"]["name"] != "postgres"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        refs = {ref.get("configMapRef", ref.get("secretRef", {})).get("name")
                for ref in container["envFrom"]}
        assert config["metadata"]["name"] in refs
        given = set(config["data"]) | {item["name"] for item in container.get("env", [])}
        service = container["args"][0].replace("-", "_")
        # The remaining secrets come from warren-secrets, created out of band in production.
        missing = read_by(service) - NOT_DEPLOYMENT_SETTINGS - RS256_ONLY - SECRETS - given
        assert not missing, f"{overlay}/{service} reads {sorted(missing)}, which k8s does not set"
        assert "WARREN_AMQP_URL" in given


def _secret_keys_documented() -> Iterator[str]:
    from tests.deploy.manifests import ROOT

    text = (ROOT / "docs" / "deploy.md").read_text()
    yield from (name for name in SECRETS if name in text)


def test_deploy_doc_lists_every_secret() -> None:
    assert set(_secret_keys_documented()) == SECRETS
