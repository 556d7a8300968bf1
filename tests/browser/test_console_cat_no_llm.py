"""A Cat with no language model: the chat panel says so and links to the Cat's settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import NO_PLAYWRIGHT, Console, ThreadedCat
from tests.support.up import WarrenUp

pytest.importorskip("playwright", reason=NO_PLAYWRIGHT)
from playwright.sync_api import expect  # noqa: E402


@pytest.fixture(scope="module")
def cat() -> Iterator[ThreadedCat]:
    double = ThreadedCat()
    double.start()
    yield double
    double.stop()


@pytest.fixture(scope="module")
def up(start_up: Callable[..., WarrenUp], cat: ThreadedCat) -> WarrenUp:
    assert cat.cat is not None
    return start_up(WARREN_CAT_URL=cat.cat.url, WARREN_CAT_PROTOCOL="v1")


def test_the_chat_links_to_the_page_where_a_model_is_chosen(
    up: WarrenUp, cat: ThreadedCat, open_console: Callable[[WarrenUp, str], Console],
    artifacts: Path,
) -> None:
    assert cat.cat is not None
    bob = open_console(up, "bob")
    page = bob.page
    page.fill("#chat-text", "!no-llm")  # the double answers as a Cat without a model
    page.click("#chat-form button[type=submit]")
    answer = page.locator("#chat-log .bubble.error").last
    expect(answer).to_contain_text("The Cat has no language model configured")
    link = answer.locator("a")
    expect(link).to_have_text(f"{cat.cat.url}/admin/")
    expect(link).to_have_attribute("href", f"{cat.cat.url}/admin/")
    expect(page.locator("#cat-status")).to_contain_text("Cat ready")  # reachable, not down
    page.locator("#chat-panel").screenshot(path=str(artifacts / "console-chat-no-llm.png"))
