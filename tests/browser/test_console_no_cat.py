"""With no Cat anywhere, the chat panel says "Cat unavailable" instead of waiting forever."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.supervisor.ports import free_port
from tests.browser.conftest import NO_PLAYWRIGHT, Console
from tests.support.up import WarrenUp

pytest.importorskip("playwright", reason=NO_PLAYWRIGHT)
from playwright.sync_api import expect  # noqa: E402


@pytest.fixture(scope="module")
def up(start_up: Callable[..., WarrenUp], tmp_path_factory: pytest.TempPathFactory) -> WarrenUp:
    return start_up(
        WARREN_CAT_URL=f"http://127.0.0.1:{free_port('127.0.0.1')}",  # nothing answers there
        WARREN_CAT_VENV=str(tmp_path_factory.mktemp("no-cat")),  # and no Cat is installed
        WARREN_CAT_CONNECT_TIMEOUT_S="1",
    )


def test_chat_shows_cat_unavailable(
    up: WarrenUp, open_console: Callable[[WarrenUp, str], Console], artifacts: Path
) -> None:
    up.wait_for('cat .*"Cat unavailable"')  # warren up says so when it starts
    bob = open_console(up, "bob")
    page = bob.page
    expect(page.locator("#cat-status")).to_have_text("Cat unavailable")
    page.fill("#chat-text", "is anyone there?")
    page.click("#chat-form button[type=submit]")
    answer = page.locator("#chat-log .bubble.error").last
    expect(answer).to_contain_text("Cat unavailable")
    expect(page.locator("#chat-log .bubble.streaming")).to_have_count(0)
    page.locator("#chat-panel").screenshot(path=str(artifacts / "console-chat-unavailable.png"))
