"""Hostile positions (docs/protocol.md 17.2, 17.3).

Whatever a client puts in ``since``, it gets ``welcome`` with ``recovered: false`` and
``reason: "invalid_position"`` when it is not a usable position, never a crash, and never
another user's events: a position says nothing about keys, so one taken from another
user's session, or forged, replays only the keys of the connection's own token.

Before each attempt, events are published to the user itself, to another user and to a
foreign group: a replay where none is due, or of the wrong keys, would show them before
a marker published after the attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from shared.config import HistorySettings
from shared.messaging import ADDRESS_BROADCAST, Address
from shared.messaging.broker import Publisher
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.history import Feed, position, read_recovery, since

WINDOW_S = HistorySettings().window_s


async def attempt(
    edge: EdgeServer, publisher: Publisher, token: str, query: str
) -> tuple[Client, Feed]:
    feed = Feed(publisher)
    await feed.rounds([Address.user("alice"), Address.user("eve"), Address.group("ops")], 2)
    return await Client.connect(edge.port, token, query=query), feed


async def nothing_before_a_marker(client: Client, feed: Feed) -> None:
    marker = await feed.publish(Address.user("alice"))
    frame = await client.recv()
    assert frame.get("id") == marker.id, f"before the marker: {frame}"


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize(
    "query",
    [
        "since=abc",
        "since=",
        "since=NaN",
        "since=nan",
        "since=inf",
        "since=-inf",
        "since=Infinity",
        "since=1e400",
        "since=-1e400",
        "since=1e9999999999",
        "since=-1",
        "since=-0.5",
        "since=-1e-9",
        "since=0x10",
        "since=1%2C5",
        "since=1.5.5",
        "since=%00",
        "since=%E2%80%8B1",  # a zero-width space before the digit
        "since=abc&since=-1",
        "since=1700000000&since=1700000000",  # repeated: which one would it be?
        "since=1_700_000_000",
        "since=%2B1700000000",
        "since=0x6553F100",
        "since=" + "9" * 30_000,
        "since=" + "a" * 30_000,
        "since=0." + "0" * 20_000 + "x",
    ],
    ids=lambda query: query if len(query) < 40 else f"{query[:20]}...({len(query)})",
)
async def test_a_position_that_is_no_number_gets_the_fallback(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str], query: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, feed = await attempt(edge, publisher, token_for("alice"), query)
    welcome = client.welcome["data"]
    assert (welcome.get("recovered"), welcome.get("reason")) == (False, "invalid_position"), welcome
    await nothing_before_a_marker(client, feed)
    no_errors_logged(caplog)


@pytest.mark.parametrize("ahead", [3600.0, 10 * 365 * 86400.0, WINDOW_S + 1.0])
async def test_a_position_in_the_future_beyond_the_window_gets_the_fallback(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str], ahead: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, feed = await attempt(edge, publisher, token_for("alice"), since(time.time() + ahead))
    welcome = client.welcome["data"]
    assert (welcome.get("recovered"), welcome.get("reason")) == (False, "invalid_position"), welcome
    await nothing_before_a_marker(client, feed)
    no_errors_logged(caplog)


async def test_a_position_just_ahead_within_the_window_is_a_position(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    at = time.time() + WINDOW_S / 4
    client, feed = await attempt(edge, publisher, token_for("alice"), since(at))
    recovery = await read_recovery(client)
    assert recovery.recovered is True, recovery.welcome
    expected = [e.id for e in feed.published if str(e.to) == "user:alice" and e.ts >= at - WINDOW_S]
    assert [f["id"] for f in recovery.replayed] == expected
    await nothing_before_a_marker(client, feed)


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda at: f"{at:.9e}".replace("+", "%2B"), id="exponent"),
        pytest.param(lambda at: f"{at:.12f}", id="twelve-decimals"),
    ],
)
async def test_a_position_written_as_another_json_number_is_a_position(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str],
    spell: Callable[[float], str],
) -> None:
    # 17.2: a position is a JSON number; these are finite, not negative, not ahead.
    at = time.time() - 60
    client, feed = await attempt(edge, publisher, token_for("alice"), "since=" + spell(at))
    recovery = await read_recovery(client)
    assert recovery.recovered is True, recovery.welcome
    await nothing_before_a_marker(client, feed)


async def test_a_position_from_another_users_session_replays_only_this_tokens_keys(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    feed = Feed(publisher)
    xavier = await Client.connect(edge.port, token_for("xavier", ("xs",)))
    first = await feed.publish(Address.user("xavier"))
    taken = position([xavier.welcome, await xavier.recv()])
    assert taken == first.ts
    everywhere = [
        Address.user("xavier"), Address.group("xs"), Address.user("yvonne"), ADDRESS_BROADCAST
    ]
    await feed.rounds(everywhere, 3)

    yvonne = await Client.connect(edge.port, token_for("yvonne"), query=since(taken))
    recovery = await read_recovery(yvonne)
    assert recovery.recovered is True, recovery.welcome
    hers = {"user:yvonne", "broadcast"}
    expected = [e.id for e in feed.published if str(e.to) in hers and e.ts >= taken - WINDOW_S]
    assert [f["id"] for f in recovery.replayed] == expected
    assert {f["to"] for f in recovery.replayed} <= hers


async def test_a_forged_position_from_the_stream_start_replays_only_this_tokens_keys(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    client, feed = await attempt(edge, publisher, token_for("alice"), "since=0")
    recovery = await read_recovery(client)
    if recovery.recovered:  # nothing was ever dropped: all of its own events
        own = [e.id for e in feed.published if str(e.to) == "user:alice"]
        assert [f["id"] for f in recovery.replayed] == own
    else:
        assert recovery.welcome["data"]["reason"] == "too_old", recovery.welcome
    await nothing_before_a_marker(client, feed)
