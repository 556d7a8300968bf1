"""Runner settings from the environment."""

from __future__ import annotations

import pytest

from shared.config import ConfigError
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
