"""The ``warren`` command's service commands: each one runs its own service, as before."""

from __future__ import annotations

from collections.abc import Coroutine
from importlib import import_module
from typing import Any

import pytest

from services import cli

# command -> (the service's package, its log name, whether it runs on uvloop)
EXPECTED = {
    "edge": ("services.ws_edge", "edge", True),
    "cat-relay": ("services.cat_relay", "cat_relay", True),
    "runner": ("services.runner", "runner", False),
    "excel-worker": ("services.excel_worker", "excel_worker", False),
}


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_each_service_command_serves_its_own_service_with_its_settings(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    package, log_name, on_uvloop = EXPECTED[command]
    ran: list[tuple[Coroutine[Any, Any, None], bool]] = []
    logged: list[tuple[str, str]] = []
    monkeypatch.setattr(
        cli, "run_service", lambda main, *, on_uvloop: ran.append((main, on_uvloop))
    )
    monkeypatch.setattr(cli, "configure_logging", lambda name, level: logged.append((name, level)))

    cli.main([command], env={"WARREN_ENV": "development", "WARREN_LOG_LEVEL": "DEBUG"})

    [(main, uvloop)] = ran
    try:
        serve = import_module(f"{package}.server").serve
        assert main.cr_code is serve.__code__  # type: ignore[attr-defined]
        settings = main.cr_frame.f_locals["settings"]  # type: ignore[attr-defined]
        assert type(settings).__module__ == f"{package}.settings"
        assert settings.common.log_level == "DEBUG"
    finally:
        main.close()
    assert uvloop is on_uvloop
    assert logged == [(log_name, "DEBUG")]


def test_the_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"], env={})
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    for command in (*EXPECTED, "up", "user", "token", "publish"):
        assert command in shown


def test_bad_settings_stop_a_service_command_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cat-relay"], env={"WARREN_ENV": "development", "WARREN_CAT_PROTOCOL": "v9"})
    assert exit_.value.code == 2
    assert "warren cat-relay: WARREN_CAT_PROTOCOL must be v1, v2 or auto" in capsys.readouterr().err
