"""Runner settings from the environment."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import ConfigError
from services.runner import settings as runner_settings
from services.runner.process import ChildUser
from services.runner.settings import RunnerSettings


def test_defaults() -> None:
    settings = RunnerSettings.from_env({})
    assert settings.http.port == 8200
    assert settings.max_concurrent == 4 and settings.max_per_user == 2
    assert settings.max_queue_s == 300 and settings.command_prefetch == 16
    assert settings.stop_grace_s + settings.kill_grace_s < 1.0
    assert settings.http_job_url == ""
    assert settings.common.instance_id.startswith("runner-")


def test_overrides() -> None:
    settings = RunnerSettings.from_env({
        "WARREN_RUNNER_MAX_CONCURRENT": "8", "WARREN_RUNNER_MAX_WALL_S": "5",
        "WARREN_RUNNER_HTTP_JOB_URL": "http://127.0.0.1:9000", "WARREN_RUNNER_PORT": "0",
        "PATH": "/opt/bin",
    })
    assert settings.max_concurrent == 8 and settings.max_wall_s == 5.0
    assert settings.http_job_url == "http://127.0.0.1:9000"
    assert settings.http.port == 0 and settings.child_path == "/opt/bin"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WARREN_RUNNER_MAX_CONCURRENT": "0"}, "at least 1"),
        ({"WARREN_RUNNER_MAX_WALL_S": "abc"}, "must be a number"),
        ({"WARREN_RUNNER_MAX_WALL_S": "3600"}, "consumer_timeout"),
        ({"WARREN_RUNNER_HEARTBEAT_S": "10", "WARREN_RUNNER_HEARTBEAT_TIMEOUT_S": "15"},
         "at least twice"),
        ({"WARREN_RUNNER_HTTP_JOB_URL": "ftp://x"}, "http:// or https://"),
        ({"WARREN_RUNNER_PORT": "70000"}, "TCP port"),
    ],
)
def test_bad_settings_stop_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        RunnerSettings.from_env(env)
    assert message in str(caught.value)


def test_the_files_directory_is_var_files_in_development_and_off_otherwise(
    tmp_path: Path
) -> None:
    assert RunnerSettings.from_env({"WARREN_ENV": "development"}).files_dir == (
        Path("var/files").resolve())
    assert RunnerSettings.from_env({}).files_dir is None
    chosen = RunnerSettings.from_env({"WARREN_RUNNER_FILES_DIR": str(tmp_path)})
    assert chosen.files_dir == tmp_path.resolve()


def _open_dir(parent: Path, mode: int) -> Path:
    path = parent / f"dir-{mode:o}"
    path.mkdir(mode=mode)
    path.chmod(mode)
    return path


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory every user may enter (pytest's own temporary directories are private)."""
    path = Path(tempfile.mkdtemp(prefix="warren-runner-settings-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


NOBODY = ChildUser.lookup("nobody")


def test_readability_is_judged_for_the_child_user(world: Path) -> None:
    public, private = _open_dir(world, 0o755), _open_dir(world, 0o700)
    (public / "f").write_text("x")
    (public / "f").chmod(0o644)
    (public / "secret").write_text("x")
    (public / "secret").chmod(0o600)
    assert runner_settings._unreadable(NOBODY, [public, public / "f"]) is None
    assert runner_settings._unreadable(NOBODY, [private / "f"]) == private
    assert runner_settings._unreadable(NOBODY, [public / "secret"]) == public / "secret"
    assert runner_settings._unreadable(NOBODY, [public / "missing"]) == public / "missing"
    os.chown(private, NOBODY.uid, NOBODY.gid)  # the owner's bits apply to its owner
    assert runner_settings._unreadable(NOBODY, [private]) is None


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@as_root
def test_a_root_runner_runs_jobs_as_nobody_when_nobody_can_run_them(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_settings, "_code_paths", lambda: [world])
    assert RunnerSettings.from_env({}).child_user == NOBODY
    assert RunnerSettings.from_env({"WARREN_RUNNER_CHILD_USER": "65534"}).child_user == NOBODY
    assert RunnerSettings.from_env({"WARREN_RUNNER_CHILD_USER": "root"}).child_user is None


@as_root
def test_a_child_user_who_cannot_start_python_is_refused_or_not_the_default(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = _open_dir(world, 0o700)
    monkeypatch.setattr(runner_settings, "_code_paths", lambda: [private])
    with pytest.raises(ConfigError, match="cannot reach"):
        RunnerSettings.from_env({"WARREN_RUNNER_CHILD_USER": "nobody"})
    # Unset: the runner starts, with its jobs as root (and says so in its log).
    assert RunnerSettings.from_env({}).child_user is None


@as_root
def test_the_files_directory_must_be_readable_by_the_child_user(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_settings, "_code_paths", lambda: [world])
    private = _open_dir(world, 0o700)
    with pytest.raises(ConfigError, match="must be readable by WARREN_RUNNER_CHILD_USER"):
        RunnerSettings.from_env({"WARREN_RUNNER_FILES_DIR": str(private)})


def test_an_unknown_child_user_stops_the_start() -> None:
    with pytest.raises(ConfigError, match="not a user of this system"):
        RunnerSettings.from_env({"WARREN_RUNNER_CHILD_USER": "no-such-user-here"})
