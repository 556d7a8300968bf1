"""A reload of the console in the middle of a streaming answer or a run, in Chromium,
against ``warren up``: the page saves its position with the chat and the terminal, and
after the reload the edge replays what the page missed (docs/protocol.md 17), so the
answer and the terminal go on where they were, with nothing missing and nothing twice.

To be sure that something is missed, the reloaded page's socket is held (Playwright
routes it and connects it to the edge only later) until the service has published more
of the answer or the run: those events can reach the page only through the replay.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.browser.conftest import NO_PLAYWRIGHT, Console, ThreadedCat
from tests.support.up import WarrenUp

pytest.importorskip("playwright", reason=NO_PLAYWRIGHT)
from playwright.sync_api import Page, WebSocketRoute, expect  # noqa: E402

OpenConsole = Callable[[WarrenUp, str], Console]
SOCKET = re.compile(r"/ws(\?|$)")
PACE_S = 0.03  # between the Cat's frames of 3 characters: ~100 characters a second
QUESTION = "Tell me everything about Warren, " + " ".join(f"part {i}," for i in range(60))
ANSWER = f"You said: {QUESTION}"
BATCHES_WHILE_AWAY = 3
POLL_S = 0.05
WAIT_S = 60.0

# Installed before the page's own scripts, on every load: each change of the newest Cat
# bubble (its text, whether it is done, the seq of its last token batch), with the
# client's state at that moment as the top bar shows it.
RECORD_ANSWER = """
window.__answer = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll("#chat-log .bubble.cat");
  const node = bubbles[bubbles.length - 1];
  if (!node) return;
  const status = document.getElementById("status");
  const entry = {
    text: node.textContent, done: node.classList.contains("done"),
    seq: node.dataset.seq === undefined ? null : Number(node.dataset.seq),
    state: status ? status.dataset.state : null,
  };
  const last = window.__answer[window.__answer.length - 1];
  if (!last || last.text !== entry.text || last.done !== entry.done || last.seq !== entry.seq) {
    window.__answer.push(entry);
  }
}).observe(document, {
  subtree: true, childList: true, characterData: true, attributes: true,
  attributeFilter: ["class", "data-seq", "data-state"],
});
"""

# Also installed before the page's scripts: on the load after the test sets the flag,
# the saved position becomes one an hour ahead of the edge's clock, which it refuses.
FUTURE_POSITION = """
if (sessionStorage.getItem("test.future-position")) {
  sessionStorage.removeItem("test.future-position");
  const state = JSON.parse(sessionStorage.getItem("warren.console"));
  state.position = Date.now() / 1000 + 3600;
  sessionStorage.setItem("warren.console", JSON.stringify(state));
}
"""


@pytest.fixture(scope="module")
def cat() -> Iterator[ThreadedCat]:
    double = ThreadedCat(pace_s=PACE_S)
    double.start()
    yield double
    double.stop()


@pytest.fixture(scope="module")
def up(start_up: Callable[..., WarrenUp], cat: ThreadedCat) -> WarrenUp:
    assert cat.cat is not None
    return start_up(
        WARREN_CAT_URL=cat.cat.url,
        WARREN_CAT_PROTOCOL="v1",
        WARREN_RELAY_TOKEN_FLUSH_CHARS="4",  # a batch every frame or two
    )


def metric(up: WarrenUp, child: str, name: str, **labels: str) -> float:
    """The sum of a child's samples called ``name`` (with these labels), from its
    ``/metrics``."""
    _, port = up.children()[child]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def poll(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pause.wait(POLL_S)


class HeldSocket:
    """From now on the page's WebSockets wait, unconnected, until :meth:`release`."""

    def __init__(self, page: Page) -> None:
        self.routes: list[WebSocketRoute] = []
        self.released = False
        page.route_web_socket(SOCKET, self._hold)

    def _hold(self, route: WebSocketRoute) -> None:
        self.routes.append(route)
        if self.released:
            route.connect_to_server()

    def release(self) -> None:
        self.released = True
        for route in self.routes:
            route.connect_to_server()


def saved_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(page.evaluate("sessionStorage.getItem('warren.console')"))
    return state


def reload_while_published(page: Page, up: WarrenUp, child: str, batches: str) -> HeldSocket:
    """Reload the page and hold its new socket until ``child`` has published
    BATCHES_WHILE_AWAY more of its ``batches``; then let it connect. Returns the hold,
    whose first route's URL is the one the page connected with."""
    before = metric(up, child, batches)
    held = HeldSocket(page)
    page.reload()
    poll(lambda: len(held.routes) > 0, "the reloaded page's socket")
    poll(lambda: metric(up, child, batches) >= before + BATCHES_WHILE_AWAY,
         f"{child} to publish while the page is away")
    held.release()
    return held


def test_a_reload_in_the_middle_of_an_answer_goes_on_where_it_was(
    up: WarrenUp, open_console: OpenConsole
) -> None:
    console = open_console(up, "alice")
    page = console.page
    page.add_init_script(RECORD_ANSWER)
    page.fill("#chat-text", QUESTION)
    page.click("#chat-form button[type=submit]")
    answer = page.locator("#chat-log .bubble.cat").last
    expect(answer).to_have_attribute(
        "data-seq", re.compile(r"^([3-9]|\d\d+)$"), timeout=WAIT_S * 1000
    )
    recoveries = metric(up, "edge-1", "warren_edge_recoveries_total", outcome="recovered")
    replayed_before = metric(up, "edge-1", "warren_edge_history_replayed_total")

    held = reload_while_published(page, up, "relay-1", "warren_relay_token_batches_total")

    query = parse_qs(urlsplit(held.routes[0].url).query)
    assert float(query["since"][0]) > 0 and "token" not in query, held.routes[0].url
    expect(answer).to_have_class(re.compile(r"\bdone\b"), timeout=WAIT_S * 1000)
    expect(answer).to_have_text(ANSWER)
    expect(page.locator("#status")).to_have_attribute("data-recovered", "true")
    expect(page.locator("#notice")).to_be_hidden()
    expect(page.locator("#chat-log .bubble.user")).to_have_text([QUESTION])

    seen: list[dict[str, Any]] = page.evaluate("window.__answer")
    restored = seen[0]
    assert not restored["done"] and restored["text"], restored
    assert ANSWER.startswith(restored["text"]), restored
    assert restored["text"] != ANSWER, "the answer was complete before the reload"
    streamed = [entry for entry in seen if not entry["done"]]
    lengths = [len(entry["text"]) for entry in streamed]
    assert lengths == sorted(lengths), "the answer went backwards"
    for entry in streamed:
        assert ANSWER.startswith(entry["text"]), f"a gap or a repeat: {entry['text']!r}"
    # The batches published while the page was away came in the replay, before replay.done:
    # they were routed before its keys were bound (its socket was held until then). The
    # edge counts what it replays; the page's own record cannot tell, since Chromium may
    # hand several frames, replay.done among them, to the page in one task.
    replayed = metric(up, "edge-1", "warren_edge_history_replayed_total") - replayed_before
    assert replayed >= BATCHES_WHILE_AWAY, (replayed, seen)
    assert max(entry["seq"] for entry in streamed) >= restored["seq"] + BATCHES_WHILE_AWAY, seen
    assert seen[-1]["done"] and seen[-1]["text"] == ANSWER
    assert metric(up, "edge-1", "warren_edge_recoveries_total", outcome="recovered") > recoveries


def terminal_lines(page: Page) -> list[str]:
    text: str = page.locator("#terminal").evaluate("node => node.textContent")
    return text.split("\n")[:-1]


def test_a_reload_in_the_middle_of_a_run_keeps_every_line_once(
    up: WarrenUp, open_console: OpenConsole
) -> None:
    count = 300
    page = open_console(up, "bob").page
    page.select_option("#run-job", "lines")
    page.fill("#arg-count", str(count))
    page.fill("#arg-rate", "40")
    page.click("#run-start")
    expect(page.locator("#terminal")).to_contain_text("line 20", timeout=WAIT_S * 1000)

    reload_while_published(page, up, "runner-1", "warren_runner_output_batches_total")

    expect(page.locator("#run-status")).to_have_text("completed", timeout=WAIT_S * 1000)
    expect(page.locator("#status")).to_have_attribute("data-recovered", "true")
    lines = terminal_lines(page)
    assert lines[0].startswith('$ lines {"count":300'), lines[:2]
    assert re.fullmatch(r"\[completed in [\d.]+ s\]", lines[-1]), lines[-3:]
    assert lines[1:-1] == [f"line {i}" for i in range(count)], [
        line for line in lines if not line.startswith("line ")
    ]
    expect(page.locator("#run-info")).to_contain_text(f"{count} lines")
    expect(page.locator("#notice")).to_be_hidden()


def test_a_position_that_cannot_be_recovered_is_said_and_the_run_read_again(
    up: WarrenUp, open_console: OpenConsole, artifacts: Path
) -> None:
    """The saved position is made one the edge refuses, and the run finishes while the
    reloaded page's socket is held: the page says what it missed, and takes the run's
    end from the HTTP API."""
    page = open_console(up, "carol").page
    page.select_option("#run-job", "lines")
    page.fill("#arg-count", "60")
    page.fill("#arg-rate", "40")
    page.click("#run-start")
    expect(page.locator("#terminal")).to_contain_text("line 5", timeout=WAIT_S * 1000)
    page.add_init_script(FUTURE_POSITION)
    page.evaluate("sessionStorage.setItem('test.future-position', '1')")
    page.wait_for_function(
        "() => JSON.parse(sessionStorage.getItem('warren.console') || 'null')?.run?.id"
    )
    run_id = saved_state(page)["run"]["id"]
    token = json.loads(page.evaluate("sessionStorage.getItem('warren.session')"))["token"]

    def finished() -> bool:
        request = urllib.request.Request(
            f"{up.console_url.rstrip('/')}/api/runs/{run_id}?tail=0",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(json.load(response)["status"] == "completed")

    held = HeldSocket(page)
    page.reload()
    poll(lambda: len(held.routes) > 0, "the reloaded page's socket")
    poll(finished, "the run to end while the page is away")
    held.release()

    expect(page.locator("#status")).to_have_attribute(
        "data-recovered", "false", timeout=WAIT_S * 1000
    )
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice-text")).to_contain_text("could not be replayed")
    expect(page.locator("#run-status")).to_have_text("completed")
    missed = re.compile(r"\[… \d+ lines? of output missed …\]")
    expect(page.locator("#terminal")).to_contain_text(missed)
    counted = re.compile(r"^60 lines · \d+ missed · completed")
    expect(page.locator("#run-info")).to_contain_text(counted)
    page.screenshot(path=str(artifacts / "console-not-recovered.png"))
    page.click("#notice-close")
    expect(page.locator("#notice")).to_be_hidden()
