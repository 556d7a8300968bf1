"""The console in a real browser: headless Chromium (Debian's) driven by Playwright, against
``warren up`` on loopback with its own vhost, SQLite file and free ports.

Without /usr/bin/chromium or the playwright package every test here is skipped, saying
so; ``scripts/test`` installs Chromium when it runs as root.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.db import UserStore, create_schema, make_engine, session_factory
from tests.support.cat_v1 import CatV1Double
from tests.support.rabbit import BrokerAdmin
from tests.support.up import WarrenUp, up_env

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "artifacts"
CHROMIUM = os.environ.get("WARREN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UI_TIMEOUT_MS = 15_000
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
USERS = (("alice", ("team",), ("admin",)), ("bob", ("team",), ()), ("carol", ("ops",), ()))

try:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Page,
        ViewportSize,
        expect,
        sync_playwright,
    )
except ImportError:  # the skips below say what to install
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

NO_PLAYWRIGHT = (
    "browser tests skipped: the playwright package is missing (pip install -e '.[test]')"
)
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}


def browser_missing() -> str | None:
    if not HAVE_PLAYWRIGHT:
        return NO_PLAYWRIGHT
    if not Path(CHROMIUM).exists():
        return (
            f"no Chromium at {CHROMIUM}: run scripts/test as root (it installs Debian's "
            "chromium) or apt-get install chromium"
        )
    return None


# Module scope, not session: while Playwright's synchronous API is open, its event loop
# counts as running in this thread, and the asyncio tests after these modules could not
# start their own.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = browser_missing()
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


class ThreadedCat:
    """The Cat 1.x test double on an event loop of its own, beside Playwright's;
    ``pace_s`` spaces an answer's frames out like a streaming model."""

    def __init__(self, pace_s: float = 0.0) -> None:
        self._pace_s = pace_s
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cat-v1", daemon=True)
        self.cat: CatV1Double | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self.cat = CatV1Double(token_size=3, pace_s=self._pace_s).start()
        self._started.set()
        self._loop.run_forever()

    def start(self) -> str:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the Cat double did not start")
        assert self.cat is not None
        return self.cat.url

    def stop(self) -> None:
        assert self.cat is not None
        asyncio.run_coroutine_threadsafe(self.cat.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def add_users(database_url: str) -> None:
    engine = make_engine(database_url)
    create_schema(engine)
    store = UserStore(session_factory(engine))
    for name, groups, roles in USERS:
        store.add(name, PASSWORDS[name], groups, roles)
    engine.dispose()


@pytest.fixture(scope="module")
def start_up(
    broker_admin: BrokerAdmin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WarrenUp]]:
    """Start ``warren up`` (with the users above) in a vhost of its own; stopped afterwards."""
    started: list[tuple[WarrenUp, str]] = []

    def start(**overrides: str) -> WarrenUp:
        if browser_missing():
            pytest.skip(f"browser tests skipped: {browser_missing()}")
        vhost = broker_admin.create_vhost("warren-browser")
        workdir = tmp_path_factory.mktemp("up")
        env = up_env(broker_admin.vhost_url(vhost), workdir, **overrides)
        add_users(env["WARREN_DATABASE_URL"])
        up = WarrenUp(env, [], workdir)
        try:
            up.start()
        except BaseException:
            up.kill()
            broker_admin.delete_vhost(vhost)
            raise
        started.append((up, vhost))
        return up

    yield start
    for up, vhost in started:
        try:
            assert up.stop() == 0, up.output()[-4000:]
        finally:
            broker_admin.delete_vhost(vhost)


@dataclass
class Console:
    """One signed-in browser tab."""

    page: Page
    context: BrowserContext
    user: str

    def send(self, kind: str, to: str, text: str) -> None:
        page = self.page
        page.select_option("#send-kind", kind)
        if kind != "broadcast":
            page.fill("#send-to", to)
        page.fill("#send-text", text)
        page.click("#send-form button[type=submit]")

    def feed_text(self, text: str) -> Any:
        return self.page.locator("#feed .msg .text", has_text=text)

    def shot(self, artifacts: Path, panel: str) -> None:
        self.page.locator(f"#{panel}-panel").screenshot(
            path=str(artifacts / f"console-{panel}.png")
        )


@pytest.fixture
def open_console(browser: Browser) -> Iterator[Callable[[WarrenUp, str], Console]]:
    """A fresh browser context (its own sessionStorage) per user, signed in and connected."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_(up: WarrenUp, user: str) -> Console:
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"{user}: {error}"))
        page.goto(up.console_url)
        sign_in(page, user)
        return Console(page, context, user)

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


def sign_in(page: Page, user: str) -> None:
    page.fill("#login-user", user)
    page.fill("#login-password", PASSWORDS[user])
    page.click("#login-submit")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#who-user")).to_have_text(user)


def wait_export_built(up: WarrenUp, task_id: str, after: int) -> None:
    up.wait_for(
        re.compile(rf"export built\s+task_id={re.escape(task_id)}"), timeout=60, after=after
    )
