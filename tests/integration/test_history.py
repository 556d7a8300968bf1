"""The ``history`` frame over raw sockets (docs/protocol.md 17.4), and the event types
the stream does not keep (17.1): live only, in neither history nor recovery."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.config import HistorySettings
from shared.messaging import ADDRESS_BROADCAST, Address
from shared.messaging.broker import Publisher, connect
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.history import Feed, read_recovery, since, stream_head

Frame = dict[str, Any]


async def history(client: Client, ref: int | str, **data: Any) -> Frame:
    return await client.request({"type": "history", "ref": ref, "data": data})


def envelopes(feed: Feed, key: str) -> list[Frame]:
    return [e.to_dict() for e in feed.published if str(e.to) == key]


async def test_history_of_own_keys_is_the_newest_events_oldest_first(
    edge: EdgeServer, publisher: Publisher, amqp_url: str, token_for: Callable[..., str]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    feed = Feed(publisher)
    mine = [Address.user("alice"), Address.group("team"), ADDRESS_BROADCAST]
    await feed.rounds([*mine, Address.user("bob"), Address.group("ops")], 5)
    for _ in range(15):  # live as well
        await alice.recv()
    head = await stream_head(amqp_url)
    assert head.event is not None and head.event.id == feed.published[0].id
    oldest = head.event.ts
    user, team, everyone = (envelopes(feed, str(key)) for key in mine)

    reply = await history(alice, 1, key="user:alice", limit=3)
    assert reply["type"] == "ack" and reply["ref"] == 1, reply
    assert reply["data"] == {"key": "user:alice", "events": user[-3:], "oldest": oldest}
    reply = await history(alice, 2, key="group:team")
    assert reply["data"] == {"key": "group:team", "events": team, "oldest": oldest}
    reply = await history(alice, 3, key="broadcast", limit=1000)
    assert reply["data"] == {"key": "broadcast", "events": everyone, "oldest": oldest}

    # ``since`` keeps events with ts >= since; ``limit`` then takes the newest of them.
    reply = await history(alice, 4, key="user:alice", since=user[2]["ts"])
    assert reply["data"]["events"] == user[2:]
    reply = await history(alice, 5, key="user:alice", since=user[1]["ts"], limit=2)
    assert reply["data"]["events"] == user[-2:]
    reply = await history(alice, 6, key="user:alice", since=user[-1]["ts"] + 1)
    assert reply["data"] == {"key": "user:alice", "events": [], "oldest": oldest}
    # A since older than the stream: everything there is, and oldest says what is gone.
    reply = await history(alice, 7, key="group:team", since=oldest - 3600)
    assert reply["data"] == {"key": "group:team", "events": team, "oldest": oldest}


async def test_limit_defaults_to_the_newest_hundred(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    feed = Feed(publisher)
    await feed.rounds([Address.user("alice")], 105)
    alice = await Client.connect(edge.port, token_for("alice"))
    events = envelopes(feed, "user:alice")
    assert (await history(alice, 1, key="user:alice"))["data"]["events"] == events[-100:]
    assert (await history(alice, 2, key="user:alice", limit=1000))["data"]["events"] == events


async def test_history_of_an_empty_stream(edge: EdgeServer, token_for: Callable[..., str]) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    reply = await history(alice, 1, key="user:alice")
    assert reply["data"] == {"key": "user:alice", "events": [], "oldest": None}


async def test_a_key_the_token_does_not_hold_is_forbidden_whether_or_not_it_has_events(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    feed = Feed(publisher)
    await feed.rounds([Address.user("bob"), Address.group("ops")], 3)
    alice = await Client.connect(edge.port, token_for("alice", ("team",)))
    messages: dict[str, str] = {}
    for ref, key in enumerate(
        ["user:bob", "user:carol", "group:ops", "group:nobody", "user:Alice"], 1
    ):
        reply = await history(alice, ref, key=key)
        assert reply["type"] == "error" and reply["ref"] == ref, reply
        assert reply["data"]["code"] == "forbidden", reply
        assert set(reply["data"]) == {"code", "message"}, reply
        messages[key] = reply["data"]["message"]
    # Nothing tells a key with events from one without.
    assert messages["user:bob"] == messages["user:carol"], messages
    assert messages["group:ops"] == messages["group:nobody"], messages
    assert "bob" not in messages["user:bob"] and "ops" not in messages["group:ops"], messages


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"key": 5},
        {"key": None},
        {"key": ""},
        {"key": ["user:alice"]},
        {"key": "alice"},
        {"key": "user:"},
        {"key": "user:a.b"},
        {"key": "user:*"},
        {"key": "group:#"},
        {"key": "broadcast:x"},
        {"key": "user:alice", "limit": 0},
        {"key": "user:alice", "limit": 1001},
        {"key": "user:alice", "limit": -1},
        {"key": "user:alice", "limit": 1.5},
        {"key": "user:alice", "limit": "10"},
        {"key": "user:alice", "limit": True},
        {"key": "user:alice", "since": "abc"},
        {"key": "user:alice", "since": "1795000000"},
        {"key": "user:alice", "since": True},
        {"key": "user:alice", "since": [1]},
        {"key": "user:alice", "since": {"ts": 1}},
    ],
)
async def test_a_malformed_history_request_is_an_invalid_frame(
    edge: EdgeServer, token_for: Callable[..., str], data: dict[str, Any]
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    reply = await history(alice, "bad", **data)
    assert reply["type"] == "error" and reply["ref"] == "bad", reply
    assert reply["data"]["code"] == "invalid_frame", reply
    # The socket stays open and answers a good request.
    assert (await history(alice, "good", key="user:alice"))["type"] == "ack"


@pytest.mark.parametrize(
    ("field", "code"),
    [
        ('"since": 1e400', "invalid_json"),
        ('"since": NaN', "invalid_json"),
        ('"since": -Infinity', "invalid_json"),
        ('"limit": 1000000000000000000000000000000', "invalid_frame"),
        ('"limit": 18446744073709551615', "invalid_frame"),
    ],
)
async def test_numbers_out_of_range_are_refused(
    edge: EdgeServer, token_for: Callable[..., str], field: str, code: str
) -> None:
    alice = await Client.connect(edge.port, token_for("alice"))
    await alice.send(f'{{"type": "history", "ref": 1, "data": {{"key": "user:alice", {field}}}}}')
    reply = await alice.recv()
    assert (reply["type"], reply["data"]["code"]) == ("error", code), reply


NOT_KEPT = [
    pytest.param({}, "excel.progress", id="default"),
    pytest.param({"WARREN_HISTORY_NOT_KEPT": "test.noisy,test.other"}, "test.noisy", id="custom"),
]


@pytest.mark.parametrize(("env", "noisy"), NOT_KEPT)
async def test_types_not_kept_are_delivered_live_only(
    make_edge: Callable[..., EdgeServer], amqp_url: str, token_for: Callable[..., str],
    env: dict[str, str], noisy: str,
) -> None:
    edge = make_edge(**env)
    await edge.start()
    token = token_for("alice")
    alice = Address.user("alice")
    connection = await connect(amqp_url, name="warren-test-publisher")
    async with connection:
        feed = Feed(await Publisher.open(connection, HistorySettings.from_env(env)))
        away = await Client.connect(edge.port, token)
        had = await feed.publish(alice)
        assert (await away.recv())["id"] == had.id
        away.close()
        await away.closed()

        live = await Client.connect(edge.port, token)
        kept = await feed.publish(alice)
        dropped = await feed.publish(alice, event_type=noisy)
        kept_too = await feed.publish(alice)
        assert [(await live.recv())["id"] for _ in range(3)] == [kept.id, dropped.id, kept_too.id]

        reply = await history(live, 1, key="user:alice")
        assert [e["id"] for e in reply["data"]["events"]] == [had.id, kept.id, kept_too.id]

        back = await Client.connect(edge.port, token, query=since(had.ts))
        recovery = await read_recovery(back)
        assert recovery.recovered is True, recovery.welcome
        assert [f["id"] for f in recovery.replayed] == [had.id, kept.id, kept_too.id]


async def test_with_history_off_a_history_request_is_unavailable(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str]
) -> None:
    edge = make_edge(WARREN_HISTORY="off")
    await edge.start()
    alice = await Client.connect(edge.port, token_for("alice"))
    reply = await history(alice, 1, key="user:alice", limit=10)
    assert reply["type"] == "error" and reply["ref"] == 1, reply
    assert reply["data"]["code"] == "unavailable", reply
