"""Every panel of the console, in Chromium, against ``warren up`` with all four services."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import openpyxl
import pytest

from tests.browser.conftest import (
    NO_PLAYWRIGHT,
    VIEWPORT,
    Console,
    ThreadedCat,
    sign_in,
    wait_export_built,
)
from tests.support.up import WarrenUp

pytest.importorskip("playwright", reason=NO_PLAYWRIGHT)
from playwright.sync_api import Browser, Page, WebSocketRoute, expect  # noqa: E402

OpenConsole = Callable[[WarrenUp, str], Console]
XSS = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'

# What is wrong with the layout, measured: the elements named shown at all; every visible
# control inside the viewport and inside its panel (or the top bar); buttons, labels and the
# status neither cut nor wrapped onto a second line; text fields showing their whole value;
# no sideways page scroll.
LAYOUT_PROBLEMS = r"""(shown) => {
  const problems = [];
  for (const selector of shown) {
    const box = document.querySelector(selector).getBoundingClientRect();
    if (!box.width || !box.height) problems.push(`${selector} is not shown`);
  }
  const width = document.documentElement.clientWidth;
  const page = document.documentElement.scrollWidth;
  if (page > width) problems.push(`the page scrolls sideways: ${page} px in ${width}`);
  const name = (node) => {
    if (node.id) return `#${node.id}`;
    const text = node.textContent.replace(/\s+/g, " ").trim().slice(0, 24);
    return `${node.tagName.toLowerCase()}.${[...node.classList].join(".")} "${text}"`;
  };
  // Text boxes that overlap vertically share a line (an icon beside text is not a line).
  const lines = (node) => {
    const boxes = [];
    const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
    for (let text = walker.nextNode(); text; text = walker.nextNode()) {
      const range = document.createRange();
      range.selectNodeContents(text);
      boxes.push(...[...range.getClientRects()].filter((box) => box.width && box.height));
    }
    boxes.sort((a, b) => a.top - b.top);
    let count = 0, bottom = -Infinity;
    for (const box of boxes) {
      if (box.top >= bottom - 0.5) count += 1;
      bottom = Math.max(bottom, box.bottom);
    }
    return count;
  };
  const oneLine = "button, .pill, .chip, h2, .brand, #status-text, #who-user, .field-name";
  const controls = `input, select, textarea, .field, ${oneLine}`;
  for (const node of document.querySelectorAll(controls)) {
    const box = node.getBoundingClientRect();
    if (!box.width || !box.height) continue;  // not shown
    if (box.left < -0.5 || box.right > width + 0.5) {
      problems.push(`${name(node)} sticks out of the viewport: ${box.left}..${box.right}`);
    }
    const container = node.parentElement.closest(".panel, .topbar");
    const outer = container && container.getBoundingClientRect();
    if (outer && (box.left < outer.left - 0.5 || box.right > outer.right + 0.5)) {
      problems.push(`${name(node)} sticks out of ${name(container)}`);
    }
    if (node.matches(oneLine)) {
      if (node.scrollWidth > node.clientWidth) {
        problems.push(`${name(node)} is cut: ${node.scrollWidth} px in ${node.clientWidth}`);
      }
      if (lines(node) > 1) problems.push(`${name(node)} wraps onto ${lines(node)} lines`);
    }
    if (node.matches("input[type=text]") && node.scrollWidth > node.clientWidth) {
      problems.push(`${name(node)} shows only part of its value`);
    }
  }
  return problems;
}"""


@pytest.fixture(scope="module")
def cat() -> Iterator[ThreadedCat]:
    double = ThreadedCat()
    double.start()
    yield double
    double.stop()


@pytest.fixture(scope="module")
def up(start_up: Callable[..., WarrenUp], cat: ThreadedCat) -> WarrenUp:
    assert cat.cat is not None
    return start_up(
        WARREN_CAT_URL=cat.cat.url,
        WARREN_CAT_PROTOCOL="v1",
        WARREN_RELAY_TOKEN_FLUSH_CHARS="4",  # several chat.token batches per answer
        WARREN_EXCEL_TEST_ROW_DELAY_S="0.002",  # exports take seconds: progress is visible
        WARREN_EXCEL_PROGRESS_INTERVAL_S="0.1",
    )


def test_every_panel_works_in_one_tab(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path
) -> None:
    """The tour a newcomer takes; its screenshots are the README's picture and layout checks."""
    alice = open_console(up, "alice")
    bob = open_console(up, "bob")
    page = alice.page
    bob.send("group", "team", "Morning! The nightly export is ready for review.")
    alice.send("user", "bob", "Thanks, looking at it now.")
    expect(alice.feed_text("Thanks, looking")).to_be_visible()
    page.fill("#chat-text", "What is Warren?")
    page.click("#chat-form button[type=submit]")
    expect(page.locator("#chat-log .bubble.cat.done")).to_have_text("You said: What is Warren?")
    page.select_option("#export-report", "sample")
    page.fill("#param-rows", "300")
    page.click("#export-form button[type=submit]")
    expect(page.locator("#export-list .export").first).to_have_class(re.compile(r"\bstatus-done\b"))
    page.select_option("#run-job", "countdown")
    page.fill("#arg-start", "3")
    page.fill("#arg-interval_s", "0.2")
    page.click("#run-start")
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#terminal")).to_contain_text("liftoff")
    expect(page.locator("#m-delivered")).not_to_have_text(re.compile(r"^[–0]$"))
    page.screenshot(path=str(artifacts / "console.png"))
    page.set_viewport_size({"width": 1280, "height": 720})
    page.screenshot(path=str(artifacts / "console-1280x720.png"))
    page.set_viewport_size({"width": 800, "height": 900})
    expect(page.locator("#terminal")).to_be_visible()
    page.screenshot(path=str(artifacts / "console-narrow.png"), full_page=True)


def assert_fits(page: Page, *shown: str) -> None:
    problems: list[str] = page.evaluate(LAYOUT_PROBLEMS, list(shown))
    assert not problems, "the layout does not fit:\n" + "\n".join(problems)


@pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 800)])
def test_the_layout_fits_from_a_phone_to_a_laptop(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path, width: int, height: int
) -> None:
    alice = open_console(up, "alice")
    page = alice.page
    page.set_viewport_size({"width": width, "height": height})
    alice.send("group", "team", "A message long enough to need two lines on a phone's screen.")
    expect(alice.feed_text("A message long enough")).to_be_visible()
    page.select_option("#run-job", "http_probe")
    page.fill("#arg-resources", "/api/console/metrics, /api/console/catalog")
    page.fill("#arg-requests", "2")
    page.click("#run-start")
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#run-info")).to_contain_text("completed in")
    expect(page.locator("#status-text")).to_contain_text("connected to edge-1-")
    page.screenshot(path=str(artifacts / f"console-{width}px.png"), full_page=True)
    assert_fits(page, "#status-text", "#who-user", "#logout")

    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#status-text")).to_have_text("signed out")
    assert_fits(page, "#status-text", "#login-submit")


def test_page_is_served_with_a_strict_content_security_policy(
    up: WarrenUp, open_console: OpenConsole
) -> None:
    console = open_console(up, "alice")
    response = console.page.goto(up.console_url)
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def test_two_users_exchange_direct_and_group_messages_and_a_broadcast_reaches_both(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path
) -> None:
    alice = open_console(up, "alice")
    bob = open_console(up, "bob")

    alice.send("user", "bob", "hello bob, directly")
    expect(bob.feed_text("hello bob, directly")).to_be_visible()
    expect(alice.feed_text("hello bob, directly")).to_be_visible()  # her own copy, marked sent
    expect(alice.page.locator("#send-text")).to_have_value("")

    bob.send("group", "team", "team: standup in five")
    expect(alice.feed_text("team: standup in five")).to_be_visible()
    expect(bob.feed_text("team: standup in five")).to_be_visible()

    alice.send("broadcast", "", "to everyone from alice")
    expect(alice.feed_text("to everyone from alice")).to_be_visible()
    expect(bob.feed_text("to everyone from alice")).to_be_visible()

    # The edge's send policy, shown inline: bob is no admin, and not in ops.
    bob.send("broadcast", "", "bob tries to broadcast")
    expect(bob.page.locator("#send-error")).to_contain_text("forbidden")
    bob.send("group", "ops", "bob writes to ops")
    expect(bob.page.locator("#send-error")).to_contain_text("only members of 'ops'")
    expect(alice.feed_text("bob tries")).to_have_count(0)
    alice.shot(artifacts, "messages")


def test_a_script_payload_in_a_message_stays_text(up: WarrenUp, open_console: OpenConsole) -> None:
    alice = open_console(up, "alice")
    bob = open_console(up, "bob")
    alice.send("group", "team", XSS)
    shown = bob.feed_text("window.__pwned")
    expect(shown).to_have_text(XSS)
    for page in (alice.page, bob.page):
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#feed script, #feed img").count() == 0


def test_chat_reply_streams_token_by_token(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path
) -> None:
    alice = open_console(up, "alice")
    page = alice.page
    expect(page.locator("#cat-status")).to_contain_text("Cat ready")
    page.fill("#chat-text", "hello cat")
    page.click("#chat-form button[type=submit]")
    answer = page.locator("#chat-log .bubble.cat").last
    expect(answer).to_have_text("You said: hello cat")
    expect(answer).to_have_class(re.compile(r"\bdone\b"))
    assert int(answer.get_attribute("data-tokens") or 0) >= 2, "the answer came in one piece"
    alice.shot(artifacts, "chat")


def test_a_run_streams_lines_and_stops(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path
) -> None:
    alice = open_console(up, "alice")
    page = alice.page
    page.select_option("#run-job", "lines")
    page.fill("#arg-count", "1000000")
    page.fill("#arg-rate", "2000")
    page.click("#run-start")
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#terminal")).to_contain_text("line 1500")
    expect(page.locator("#run-stop")).to_be_enabled()
    page.click("#run-stop")
    expect(page.locator("#run-status")).to_have_text("stopped")
    # Stopped on request, the job exits with 0: said as "stopped", never as "exit 0".
    expect(page.locator("#run-info")).to_contain_text(re.compile(r" · stopped in [\d.]+ s · on "))
    expect(page.locator("#run-info")).not_to_contain_text("exit")
    final = page.locator("#terminal .note").last
    expect(final).to_have_text(re.compile(r"^\[stopped in [\d.]+ s\] \(stopped by alice\)\s*$"))
    expect(page.locator("#run-start")).to_be_enabled()
    alice.shot(artifacts, "runner")


def test_a_job_ignoring_sigterm_is_shown_killed_by_sigkill_when_stopped(
    up: WarrenUp, open_console: OpenConsole
) -> None:
    page = open_console(up, "carol").page
    page.select_option("#run-job", "misbehave")
    page.check("#arg-ignore_sigterm")
    page.click("#run-start")
    expect(page.locator("#terminal")).to_contain_text("misbehaving: sleep for 30.0 s")
    page.click("#run-stop")
    expect(page.locator("#run-status")).to_have_text("stopped")
    expect(page.locator("#run-info")).to_contain_text(
        re.compile(r" · stopped in [\d.]+ s · killed by SIGKILL · on ")
    )


def test_thousands_of_lines_a_second_keep_the_tab_responsive_and_bounded(
    up: WarrenUp, open_console: OpenConsole
) -> None:
    page = open_console(up, "bob").page
    page.select_option("#run-job", "lines")
    page.fill("#arg-count", "100000")
    page.click("#run-start")
    expect(page.locator("#run-status")).to_have_text("running")
    # The tab takes input while the lines pour in.
    page.fill("#chat-text", "still responsive")
    expect(page.locator("#chat-text")).to_have_value("still responsive")
    expect(page.locator("#run-status")).to_have_text("completed", timeout=90_000)
    expect(page.locator("#run-info")).to_contain_text("100,000 lines")
    expect(page.locator("#terminal")).to_contain_text("line 99999")
    shown = page.evaluate("document.getElementById('terminal').textContent.split('\\n').length")
    assert shown <= 5002, f"{shown} lines kept on screen"

    page.select_option("#arg-stream", "stderr")
    page.fill("#arg-count", "3")
    page.click("#run-start")
    expect(page.locator("#run-status")).to_have_text("completed")
    stderr = page.locator("#terminal .stderr")
    expect(stderr.last).to_contain_text("line 2")
    assert "".join(stderr.all_text_contents()) == "line 0\nline 1\nline 2\n"
    assert page.locator("#terminal .stdout").count() == 0  # the terminal was cleared for this run


def test_an_export_shows_progress_and_downloads_a_real_xlsx(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path, tmp_path: Path
) -> None:
    alice = open_console(up, "alice")
    page = alice.page
    page.select_option("#export-report", "sample")
    page.fill("#param-rows", "2500")
    page.click("#export-form button[type=submit]")
    item = page.locator("#export-list .export").first
    expect(item.locator(".state")).to_have_text(re.compile(r"^running [1-9][0-9]?%$"))
    expect(item).to_have_class(re.compile(r"\bstatus-done\b"), timeout=60_000)
    with page.expect_download() as download_info:
        item.locator("a.download").click()
    download = download_info.value
    assert re.fullmatch(r"warren-sample-.*\.xlsx", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    sheet = openpyxl.load_workbook(saved, read_only=True).active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == ("id", "name", "amount", "created", "active")
    assert len(rows) == 2501
    alice.shot(artifacts, "exports")


def test_a_filter_left_unselected_is_not_sent(up: WarrenUp, open_console: OpenConsole) -> None:
    # activity's status filter is a list with choices: selecting none must leave it out
    # (every status), not send the first choice.
    alice = open_console(up, "alice")
    page = alice.page
    page.select_option("#export-report", "activity")
    with page.expect_request(lambda r: r.url.endswith("/api/exports") and r.method == "POST") as sent:
        page.click("#export-form button[type=submit]")
    params = json.loads(sent.value.post_data or "{}")["params"]
    assert "status" not in params, params
    assert params["sources"] == ["exports", "runs"]
    item = page.locator("#export-list .export").first
    expect(item).to_have_class(re.compile(r"\bstatus-done\b"), timeout=60_000)


def test_an_export_finished_while_the_tab_was_closed_appears_after_reconnect(
    up: WarrenUp, open_console: OpenConsole
) -> None:
    carol = open_console(up, "carol")
    carol.page.select_option("#export-report", "sample")
    carol.page.fill("#param-rows", "1500")
    mark = up.mark()
    carol.page.click("#export-form button[type=submit]")
    item = carol.page.locator("#export-list .export").first
    expect(item).to_have_attribute("data-task", re.compile(r"^\w+$"))
    task_id = item.get_attribute("data-task")
    assert task_id
    carol.context.close()  # the tab closes before the export is done
    wait_export_built(up, task_id, after=mark)

    again = open_console(up, "carol")
    returned = again.page.locator(f'#export-list .export[data-task="{task_id}"]')
    expect(returned).to_have_class(re.compile(r"\bstatus-done\b"))
    expect(returned.locator("a.download")).to_be_visible()


def test_metrics_show_this_edge_and_its_connections(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path
) -> None:
    alice = open_console(up, "alice")
    open_console(up, "bob")
    page = alice.page
    expect(page.locator("#m-edge")).to_have_text(re.compile(r"^edge-1-"))
    expect(page.locator("#m-connections")).to_have_text(re.compile(r"^[2-9]\d*$"))
    alice.send("group", "team", "a delivery to count")
    expect(page.locator("#m-delivered")).not_to_have_text("0")
    alice.shot(artifacts, "metrics")


def test_the_socket_reconnects_after_the_edge_closes_it(up: WarrenUp, browser: Browser) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    routes: list[WebSocketRoute] = []

    def through(route: WebSocketRoute) -> None:
        route.connect_to_server()
        routes.append(route)

    try:
        page = context.new_page()
        page.route_web_socket(re.compile(r"/ws(\?|$)"), through)
        page.goto(up.console_url)
        sign_in(page, "bob")
        # The token goes in the subprotocol header, never in the URL (access logs).
        assert "token" not in routes[0].url, routes[0].url
        with page.expect_websocket():  # the console opens a new socket by itself
            routes[0].close(code=1001, reason="server shutting down")
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        assert len(routes) == 2
        console = Console(page, context, "bob")
        console.send("user", "bob", "a note to self after the reconnect")
        expect(console.feed_text("a note to self after the reconnect")).to_be_visible()
    finally:
        context.close()


def test_the_token_survives_a_reload_and_logout_clears_it(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path
) -> None:
    alice = open_console(up, "alice")
    page = alice.page
    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#who-user")).to_have_text("alice")
    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#login-user", "alice")
    page.fill("#login-password", "wrong")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text("wrong user name or password")
    page.locator("#login-panel").screenshot(path=str(artifacts / "console-login.png"))
