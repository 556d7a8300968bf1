"""docker-compose.yml: valid Compose, scalable, health-ordered, secrets only from .env."""

from __future__ import annotations

import json
import re
from importlib import resources

import jsonschema

from tests.deploy.manifests import COMPOSE_FILE, ENV_EXAMPLE, ROOT, compose, env_file_keys

WARREN_SERVICES = ("edge", "cat_relay", "runner", "excel_worker")
INFRASTRUCTURE = ("rabbitmq", "postgres", "cheshire-cat", "prometheus", "grafana")


def test_matches_the_compose_specification() -> None:
    # The Compose specification's JSON schema, as vendored by check-jsonschema.
    schema_file = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    jsonschema.validate(compose(), json.loads(schema_file.read_text()))


def test_has_every_service_the_system_needs() -> None:
    services = compose()["services"]
    assert set(WARREN_SERVICES) | set(INFRASTRUCTURE) <= set(services)
    assert services["rabbitmq"]["image"].startswith("rabbitmq:") and "management" in services["rabbitmq"]["image"]
    plugins = (ROOT / "deploy/rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    assert services["cheshire-cat"]["image"].startswith("ghcr.io/cheshire-cat-ai/core:")


def test_warren_services_can_scale() -> None:
    # A fixed host port, a container name or a fixed hostname would break --scale.
    services = compose()["services"]
    for name in WARREN_SERVICES:
        service = services[name]
        assert "ports" not in service, name
        assert "container_name" not in service and "hostname" not in service, name


def test_services_wait_on_health_checks_not_sleeps() -> None:
    services = compose()["services"]
    for name in WARREN_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name
    for name in ("rabbitmq", "postgres", "cheshire-cat"):
        assert services[name]["healthcheck"]["test"], name
    assert "sleep" not in COMPOSE_FILE.read_text()


def test_state_lives_in_named_volumes() -> None:
    document = compose()
    assert {"rabbitmq-data", "postgres-data", "exports"} <= set(document["volumes"])
    worker_mounts = document["services"]["excel_worker"]["volumes"]
    edge_mounts = document["services"]["edge"]["volumes"]
    assert "exports:/data/exports" in worker_mounts
    assert "exports:/data/exports:ro" in edge_mounts


def test_every_interpolated_variable_is_in_the_example_env_file() -> None:
    # Compose interpolates ${VAR...} from .env; .env.example lists them all, empty.
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    example = env_file_keys(ENV_EXAMPLE)
    assert used <= set(example), f"not in .env.example: {used - set(example)}"
    secrets = {name for name in example if name.endswith(("SECRET", "PASSWORD", "PASS", "KEY"))}
    assert secrets and all(example[name] == "" for name in secrets), "no real secret in .env.example"
