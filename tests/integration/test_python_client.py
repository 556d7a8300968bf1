"""warren.client against real edges (and, for what an edge never does, tiny servers):
welcome, acks and errors, events, reconnecting by the close-code policy, token refresh,
refusals before the upgrade, garbage frames, the in-band ``replay.done``, and ``warren
listen``."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
import pytest
import tornado.web
import tornado.websocket
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from shared.db import UserStore
from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher
from services.ws_edge.server import EdgeServer
from tests.support.tcp_proxy import TcpProxy
from warren.client import (
    Backoff,
    Client,
    Event,
    Recovery,
    SeenIds,
    StateChange,
    Subscription,
    WarrenError,
    refresh_delay,
    with_since,
)

TIMEOUT = 20.0
T = TypeVar("T")


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws"


def recorder(client: Client) -> list[StateChange]:
    changes: list[StateChange] = []
    client.on_state(changes.append)
    return changes


def first_into(future: asyncio.Future[T]) -> Callable[[T], None]:
    """A listener that settles ``future`` with the first value it is called with."""
    def listener(value: T) -> None:
        if not future.done():
            future.set_result(value)
    return listener


async def within(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


async def next_event(events: Subscription) -> Event:
    event: Event = await within(anext(events))
    return event


async def publish(
    publisher: Publisher, to: Address, type: str = "report.ready", **data: Any
) -> Envelope:
    envelope = Envelope(type=type, to=to, sender=Address.service("reports"), data=data)
    await publisher.publish_event(envelope)
    return envelope


@pytest.fixture
async def closing() -> AsyncIterator[list[Client]]:
    """Clients a test opens; each is closed at the end, whatever happened."""
    clients: list[Client] = []
    yield clients
    for client in clients:
        await client.close()


# -- a tiny server for what a real edge never does ------------------------------------

class ScriptedSocket(tornado.websocket.WebSocketHandler):
    """Sends its script's frames after the upgrade, then closes with its code, if any."""

    def initialize(self, script: list[str | bytes], close: int | None) -> None:
        self.script, self.close_code_to_send = script, close

    async def open(self, *_args: str) -> None:
        for frame in self.script:
            await self.write_message(frame, binary=isinstance(frame, bytes))
        if self.close_code_to_send is not None:
            self.close(self.close_code_to_send, "scripted")


class Sequenced(tornado.websocket.WebSocketHandler):
    """Each connection plays the next of its scripts (frames, then a close code or
    none), and records the ``since`` it was opened with ("" when none)."""

    def initialize(self, scripts: list[tuple[list[str], int | None]], since: list[str]) -> None:
        self.scripts, self.since = scripts, since

    async def open(self, *_args: str) -> None:
        self.since.append(self.get_query_argument("since", ""))
        frames, close = self.scripts.pop(0)
        for frame in frames:
            await self.write_message(frame)
        if close is not None:
            self.close(close, "scripted")


class Silent(tornado.websocket.WebSocketHandler):
    """Upgrades, says when, and sends nothing: no welcome ever comes."""

    def initialize(self, opened: asyncio.Future[None]) -> None:
        self.opened = opened

    def open(self, *_args: str) -> None:
        if not self.opened.done():
            self.opened.set_result(None)


class Refuse(tornado.web.RequestHandler):
    def initialize(self, status: int, error: str, retry_after: str | None) -> None:
        self.status, self.error, self.retry_after = status, error, retry_after

    def get(self) -> None:
        self.set_status(self.status)
        if self.retry_after is not None:
            self.set_header("Retry-After", self.retry_after)
        self.finish({"error": self.error, "message": "scripted refusal"})


WELCOME = orjson.dumps({"type": "welcome", "data": {
    "user": "alice", "groups": [], "roles": [], "edge": "scripted"}}).decode()


@pytest.fixture
async def tiny() -> AsyncIterator[Callable[[tornado.web.Application], int]]:
    """Serve an application on a free port; every server is closed afterwards."""
    servers: list[HTTPServer] = []

    def serve(app: tornado.web.Application) -> int:
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        servers.append(server)
        return port

    yield serve
    for server in servers:
        server.stop()
        await server.close_all_connections()


def scripted(script: list[str | bytes], close: int | None = None) -> tornado.web.Application:
    return tornado.web.Application([(r"/ws", ScriptedSocket, {"script": script, "close": close})])


def welcome_frame(**data: Any) -> str:
    return orjson.dumps({"type": "welcome", "data": {
        "user": "alice", "groups": [], "roles": [], "edge": "scripted", **data}}).decode()


def event_frame(id: str, ts: float) -> str:
    return orjson.dumps({"v": 1, "id": id, "type": "report.ready", "ts": ts,
                         "to": "user:alice", "from": "service:x", "data": {}}).decode()


def replay_done_frame(events: int, position: float) -> str:
    return orjson.dumps({"type": "replay.done", "data": {"events": events,
                                                         "position": position}}).decode()


def refusing(status: int, error: str, retry_after: str | None = None) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/ws", Refuse, {"status": status, "error": error, "retry_after": retry_after})])


# -- pure policy ---------------------------------------------------------------------

def test_refresh_comes_at_80_percent_or_a_minute_before_expiry_but_not_before_half() -> None:
    assert refresh_delay(3600) == pytest.approx(2880)
    assert refresh_delay(200) == pytest.approx(140)  # a minute before exp comes first
    assert refresh_delay(10) == pytest.approx(5)  # never sooner than half its life


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    top = Backoff(jitter=lambda: 1.0)
    assert [top.delay(n) for n in (1, 2, 3, 7, 8, 50)] == [0.5, 1.0, 2.0, 30.0, 30.0, 30.0]
    assert top.delay(1, overload=True, retry_after=1.0) == 6.0
    assert top.delay(2, overload=True) == 10.0
    assert Backoff(jitter=lambda: 0.0).delay(9, overload=True, retry_after=2.0) == 2.0


def test_backoff_numbers_are_those_of_protocol_8_1_and_the_javascript_client() -> None:
    defaults = Backoff()
    assert (defaults.base_s, defaults.cap_s, defaults.overload_base_s, defaults.drain_jitter_s,
            defaults.max_failures) == (0.5, 30.0, 5.0, 0.5, None)


def test_the_position_goes_into_the_url_to_the_microsecond_rounded_down() -> None:
    assert with_since("ws://h/ws", None) == "ws://h/ws"
    assert with_since("ws://h/ws", 1796000000.5) == "ws://h/ws?since=1796000000.500000"
    assert with_since("ws://h/ws?since=1&x=y", 1796000000.1234569) == (
        "ws://h/ws?x=y&since=1796000000.123456")
    assert with_since("ws://h/ws", 0) == "ws://h/ws?since=0.000000"


def test_seen_ids_keep_what_a_replay_can_send_again_and_stay_under_the_cap() -> None:
    seen = SeenIds(cap=10_000)  # span: window 2 s + 1 s
    for n in range(300):  # ten ids a second of ts, from ts 0
        seen.add(f"e{n}", n / 10)
        # Every id with ts at least position - span is still known.
        assert all(f"e{m}" in seen for m in range(n + 1) if m / 10 >= n / 10 - seen.span_s)
    assert "e0" not in seen  # and the old ones go, a generation at a time
    assert len(seen) <= 2 * (seen.span_s * 10 + 1)

    crowded = SeenIds(cap=2000)  # every id at the same ts: the cap decides
    for n in range(10_000):
        crowded.add(f"c{n}", 100.0)
        assert len(crowded) <= 2000
    assert all(f"c{m}" in crowded for m in range(9000, 10_000))  # at least the newest half


# -- against an edge -----------------------------------------------------------------

@pytest.mark.parametrize("auth", ["subprotocol", "header"])
async def test_connects_with_the_token_out_of_the_url(
    edge: EdgeServer, token_for: Callable[..., str], closing: list[Client], auth: Any
) -> None:
    client = Client(url(edge.port), token=token_for("alice", ("team",)), auth=auth)
    closing.append(client)
    welcome = await within(client.connect())
    assert (welcome.user, welcome.groups) == ("alice", ("team",))
    assert welcome.edge == edge.settings.common.instance_id
    assert client.state == "connected"


async def test_send_returns_the_ack_and_raises_the_error_code(
    edge: EdgeServer, token_for: Callable[..., str], closing: list[Client]
) -> None:
    client = Client(url(edge.port), token=token_for("alice", ("team",)))
    closing.append(client)
    events = client.events("message")
    await within(client.connect())

    ack = await client.send("message.send", to="group:team", data={"text": "hi"})
    event = await next_event(events)
    assert (event.id, event.sender, event.to, event.data) == (
        ack["id"], "user:alice", "group:team", {"text": "hi"})

    with pytest.raises(WarrenError) as forbidden:
        await client.send("message.send", to="group:ops", data={})
    assert forbidden.value.code == "forbidden"
    with pytest.raises(WarrenError) as unknown:
        await client.command("no.such_command", {"job": "nightly"})
    assert unknown.value.code == "unknown_type"
    assert client.state == "connected"


async def test_events_arrive_in_order_filtered_by_type_and_once_per_id(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher, closing: list[Client]
) -> None:
    client = Client(url(edge.port), token=token_for("bob"))
    closing.append(client)
    everything, reports = client.events(), client.events("report.ready")
    await within(client.connect())
    bob = Address.user("bob")

    sent = [await publish(publisher, bob, "report.ready", n=n) for n in range(3)]
    other = await publish(publisher, bob, "chat.token", n=9)
    await publisher.publish_event(sent[0])  # the same id again, as a notification can come

    assert [(await next_event(reports)).data["n"] for _ in range(3)] == [0, 1, 2]
    received = [await next_event(everything) for _ in range(4)]
    assert [event.id for event in received] == [*(e.id for e in sent), other.id]
    assert received[0] == Event(sent[0].id, "report.ready", "service:reports", "user:bob",
                                received[0].ts, {"n": 0})
    # The repeat came after every other event; one more event proves it was dropped.
    last = await publish(publisher, bob, "chat.token", n=10)
    assert (await next_event(everything)).id == last.id
    assert client.stats.duplicates == 1
    assert client.last_event_id == last.id


async def test_1001_from_a_draining_edge_reconnects_to_the_next_at_once(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str], publisher: Publisher,
    closing: list[Client],
) -> None:
    first, second = make_edge(), make_edge()
    await first.start()
    await second.start()
    # The largest wait the draw allows: drain_jitter_s. A failed attempt would wait
    # base_s (10 s here) and, with max_failures=0, stop the client: a drain is neither.
    client = Client([url(first.port), url(second.port)], token=token_for("carol"),
                    backoff=Backoff(base_s=10.0, max_failures=0, jitter=lambda: 1.0))
    closing.append(client)
    changes = recorder(client)
    events = client.events()
    await within(client.connect())

    await first.stop()
    await within(client.wait_for_state("reconnecting"))
    await within(client.wait_for_state("connected"))

    assert client.welcome is not None
    assert client.welcome.edge == second.settings.common.instance_id
    [lost] = [change for change in changes if change.state == "reconnecting"]
    assert lost.error is not None and lost.error.code == "close_1001"
    assert lost.delay == client.backoff.drain_jitter_s == 0.5
    sent = await publish(publisher, Address.user("carol"))
    assert (await next_event(events)).id == sent.id


async def test_a_cut_connection_is_retried_with_backoff_until_it_comes_back(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher, closing: list[Client]
) -> None:
    proxy = await TcpProxy("127.0.0.1", edge.port).start()
    try:
        client = Client(url(proxy.port), token=token_for("dave"),
                        backoff=Backoff(base_s=0.05, cap_s=0.2))
        closing.append(client)
        events = client.events()
        failures: list[StateChange] = []

        def on_state(change: StateChange) -> None:
            if change.state == "reconnecting":
                failures.append(change)
                if len(failures) == 3:  # the link lost, then two attempts refused
                    proxy.restore()

        client.on_state(on_state)
        await within(client.connect())
        proxy.cut()
        await within(client.wait_for_state("reconnecting"))
        await within(client.wait_for_state("connected"))

        assert [change.error.code for change in failures if change.error] == [
            "close_1006", "unreachable", "unreachable"]
        sent = await publish(publisher, Address.user("dave"))
        assert (await next_event(events)).id == sent.id
    finally:
        await proxy.close()


async def test_4001_gets_a_new_token_and_reconnects(
    edge: EdgeServer, token_for: Callable[..., str], closing: list[Client]
) -> None:
    issued: list[str] = []

    async def get_token() -> str:
        issued.append(token_for("erin", ttl_s=60))
        return issued[-1]

    client = Client(url(edge.port), token=token_for("erin", ttl_s=2), get_token=get_token,
                    refresh=False)
    closing.append(client)
    changes = recorder(client)
    await within(client.connect())

    await within(client.wait_for_state("reconnecting"))  # at the token's exp
    await within(client.wait_for_state("connected"))
    [expired] = [change for change in changes if change.state == "reconnecting"]
    assert expired.error is not None and expired.error.code == "close_4001"
    assert len(issued) == 1


async def test_4001_without_a_way_to_get_a_token_stops_unauthorized(
    edge: EdgeServer, token_for: Callable[..., str], closing: list[Client]
) -> None:
    client = Client(url(edge.port), token=token_for("erin", ttl_s=1))
    closing.append(client)
    events = client.events()
    await within(client.connect())

    change = await within(client.wait_for_state("unauthorized", "failed"))
    assert change.state == "unauthorized"
    with pytest.raises(WarrenError) as stopped:
        await next_event(events)
    assert stopped.value.code == "close_4001"
    with pytest.raises(WarrenError):
        await client.send("message.send", to="user:erin")


async def test_a_refused_token_is_replaced_once_then_the_client_stops(
    edge: EdgeServer, closing: list[Client]
) -> None:
    calls: list[int] = []

    def get_token() -> str:
        calls.append(1)
        return "not.a.token"

    client = Client(url(edge.port), token="also.not.a-token", get_token=get_token)
    closing.append(client)
    with pytest.raises(WarrenError) as refused:
        await within(client.connect())
    assert refused.value.code == "token_invalid"
    assert client.state == "unauthorized"
    assert len(calls) == 1


async def test_too_many_sockets_stops_and_says_why(
    make_edge: Callable[..., EdgeServer], token_for: Callable[..., str], closing: list[Client]
) -> None:
    edge = make_edge(WARREN_EDGE_MAX_SOCKETS_PER_USER="1")
    await edge.start()
    first = Client(url(edge.port), token=token_for("frank"))
    second = Client(url(edge.port), token=token_for("frank"))
    closing += [first, second]
    await within(first.connect())
    with pytest.raises(WarrenError) as refused:
        await within(second.connect())
    assert refused.value.code == "too_many_sockets"
    assert second.state == "failed"
    assert first.state == "connected"


async def test_503_overloaded_backs_off_at_least_retry_after(
    edge: EdgeServer, token_for: Callable[..., str], tiny: Callable[..., int],
    closing: list[Client],
) -> None:
    busy = tiny(refusing(503, "overloaded", retry_after="1"))
    client = Client([url(busy), url(edge.port)], token=token_for("gina"),
                    backoff=Backoff(jitter=lambda: 0.0))
    closing.append(client)
    changes = recorder(client)
    await within(client.connect())

    [refused] = [change for change in changes if change.state == "reconnecting"]
    assert refused.error is not None and refused.error.code == "overloaded"
    assert refused.delay == 1.0
    assert client.welcome is not None and client.welcome.edge == edge.settings.common.instance_id


@pytest.mark.parametrize(
    ("code", "state"),
    [(1008, "failed"), (4099, "failed"), (1013, "reconnecting"), (4008, "reconnecting"),
     (4029, "reconnecting"), (1011, "reconnecting")],
)
async def test_close_codes_follow_the_documented_policy(
    tiny: Callable[..., int], closing: list[Client], code: int, state: str
) -> None:
    port = tiny(scripted([WELCOME], close=code))
    client = Client(url(port), token="t", backoff=Backoff(jitter=lambda: 1.0))
    closing.append(client)
    await within(client.connect())

    change = await within(client.wait_for_state("reconnecting", "failed"))
    assert change.state == state
    assert change.error is not None and change.error.code == f"close_{code}"
    if code == 1013:
        assert change.delay == client.backoff.overload_base_s  # harder than 0.5 s


async def test_the_position_follows_events_welcomes_and_replay_done_across_reconnects(
    tiny: Callable[..., int], closing: list[Client]
) -> None:
    scripts: list[tuple[list[str], int | None]] = [
        # A replay cut short: its events move the position, its welcome's does not.
        ([welcome_frame(position=200.0, window=2.0, recovered=True),
          event_frame("e1", 150.0)], 1011),
        ([welcome_frame(position=220.0, window=2.0, recovered=True)], 1011),
        # A replay to its end: a repeat dropped, then replay.done's position, then live.
        ([welcome_frame(position=250.0, window=2.0, recovered=True),
          event_frame("e1", 150.0), event_frame("e2", 160.0), replay_done_frame(2, 250.0),
          event_frame("e3", 251.0)], 1011),
        # Too old: the welcome's position starts afresh, and the application is told.
        ([welcome_frame(position=300.0, window=2.0, recovered=False, reason="too_old",
                  oldest=240.0)], None),
    ]
    since: list[str] = []
    port = tiny(tornado.web.Application(
        [(r"/ws", Sequenced, {"scripts": scripts, "since": since})]))
    client = Client(url(port), token="t", position=100.0, backoff=Backoff(jitter=lambda: 0.0))
    closing.append(client)
    changes = recorder(client)
    lost: asyncio.Future[StateChange] = asyncio.get_running_loop().create_future()

    def on_state(change: StateChange) -> None:
        if change.welcome is not None and change.welcome.recovered is False:
            first_into(lost)(change)

    client.on_state(on_state)
    events = client.events()
    await within(client.connect())

    assert [(await next_event(events)).id for _ in range(3)] == ["e1", "e2", "e3"]
    change = await within(lost)

    assert since == ["100.000000", "150.000000", "150.000000", "251.000000"]
    assert client.position == 300.0
    last = change.welcome
    assert last is not None
    assert (last.recovered, last.reason, last.oldest, last.since) == (
        False, "too_old", 240.0, 251.0)
    assert client.welcome == last
    assert [c.state for c in changes] == [
        "connecting", "recovering", "reconnecting", "connecting", "recovering", "reconnecting",
        "connecting", "recovering", "connected", "reconnecting", "connecting", "connected"]
    assert [c.welcome.recovered for c in changes if c.welcome is not None] == [
        True, True, True, True, False]
    assert (client.stats.duplicates, client.stats.replayed, client.stats.recovered,
            client.stats.not_recovered) == (1, 2, 3, 1)


async def test_without_a_position_the_welcome_gives_one_and_recovered_is_none(
    tiny: Callable[..., int], closing: list[Client]
) -> None:
    port = tiny(scripted([welcome_frame(position=42.5, window=3.0)]))
    client = Client(url(port), token="t")
    closing.append(client)
    welcomed = await within(client.connect())
    assert (welcomed.recovered, welcomed.since, welcomed.window) == (None, None, 3.0)
    assert client.position == 42.5


async def test_an_edge_that_ignores_the_position_is_reported_as_not_recovered(
    tiny: Callable[..., int], closing: list[Client]
) -> None:
    port = tiny(scripted([WELCOME]))  # no position, no recovered: an edge before section 17
    client = Client(url(port), token="t", position=7.25)
    closing.append(client)
    welcomed = await within(client.connect())
    assert (welcomed.recovered, welcomed.reason, welcomed.since) == (False, "unsupported", 7.25)
    assert client.position == 7.25
    assert client.state == "connected"


@pytest.mark.parametrize("position", [-1.0, math.nan, math.inf])
def test_a_position_that_is_not_one_is_refused_at_once(position: float) -> None:
    with pytest.raises(ValueError):
        Client("ws://127.0.0.1:1/ws", token="t", position=position)


async def test_garbage_frames_are_reported_and_the_client_carries_on(
    tiny: Callable[..., int], closing: list[Client]
) -> None:
    event = {"v": 1, "id": "e1", "type": "report.ready", "ts": 1.5, "to": "user:alice",
             "from": "service:x", "data": {"ok": True}}
    garbage: list[str | bytes] = [
        "not json", b"\x00\x01", "[1, 2]", '"text"',
        orjson.dumps({"type": "ack", "ref": 99, "data": {}}).decode(),
        orjson.dumps({"type": "surprise"}).decode(),
        orjson.dumps({**event, "id": 7}).decode(),
        orjson.dumps({**event, "data": None}).decode(),
        replay_done_frame(0, 1.0),  # with no replay going on
    ]
    port = tiny(scripted(["{", WELCOME, *garbage, orjson.dumps(event).decode()]))
    client = Client(url(port), token="t")
    closing.append(client)
    reported: list[WarrenError] = []
    client.on_error(reported.append)
    events = client.events()
    await within(client.connect())

    received = await next_event(events)
    assert received.id == "e1" and received.data == {"ok": True}
    assert client.stats.garbage_frames == len(garbage) + 1
    assert {error.code for error in reported} == {"garbage_frame"}
    assert client.state == "connected"


async def test_token_refresh_across_expiry_loses_no_event(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher, closing: list[Client]
) -> None:
    issued: list[str] = []

    def get_token() -> str:
        issued.append(token_for("hana", ("team",), ttl_s=60))
        return issued[-1]

    lifetime = 3
    first_exp = time.time() + lifetime
    client = Client(url(edge.port), token=token_for("hana", ("team",), ttl_s=lifetime),
                    get_token=get_token)
    closing.append(client)
    changes = recorder(client)
    events = client.events()
    await within(client.connect())

    # Events go on being published and received until well past the first token's exp.
    sent: list[str] = []
    received: list[str] = []
    while time.time() < first_exp + 1.5:
        sent.append((await publish(publisher, Address.group("team"), n=len(sent))).id)
        received.append((await next_event(events)).id)

    assert received == sent
    assert issued, "the client never asked for a new token"
    assert [change.state for change in changes] == ["connecting", "connected"]
    assert client.state == "connected"


async def test_a_refresh_to_fewer_groups_narrows_what_the_socket_receives(
    edge: EdgeServer, token_for: Callable[..., str], publisher: Publisher, closing: list[Client]
) -> None:
    client = Client(url(edge.port), token=token_for("iris", ("team",), ttl_s=2),
                    get_token=lambda: token_for("iris", (), ttl_s=60))
    closing.append(client)
    taken: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    client.on_token(first_into(taken))
    events = client.events()
    await within(client.connect())

    await within(taken)  # the edge acked the refresh
    assert client.welcome is not None and client.welcome.groups == ()
    await publish(publisher, Address.group("team"), n=0)
    mine = await publish(publisher, Address.user("iris"), n=1)
    assert (await next_event(events)).id == mine.id
    assert client.state == "connected"


async def test_a_refresh_to_another_users_token_is_reported_and_changes_nothing(
    edge: EdgeServer, token_for: Callable[..., str], closing: list[Client]
) -> None:
    client = Client(url(edge.port), token=token_for("jack", ttl_s=3),
                    get_token=lambda: token_for("mallory", ttl_s=60))
    closing.append(client)
    refused: asyncio.Future[WarrenError] = asyncio.get_running_loop().create_future()
    client.on_error(first_into(refused))
    await within(client.connect())

    error = await within(refused)
    assert error.code == "forbidden"
    assert client.state == "connected"
    assert client.welcome is not None and client.welcome.user == "jack"


async def test_close_while_waiting_for_the_welcome_ends_connect_at_once(
    tiny: Callable[..., int]
) -> None:
    opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    port = tiny(tornado.web.Application([(r"/ws", Silent, {"opened": opened})]))
    client = Client(url(port), token="t")
    connecting = asyncio.create_task(client.connect())
    await within(opened)

    await within(client.close())
    with pytest.raises(WarrenError) as closed:
        await within(connecting)
    assert closed.value.code == "closed"
    assert client.state == "closed"


# -- warren listen ---------------------------------------------------------------------

async def test_warren_listen_prints_events_as_json_lines_until_interrupted(
    edge: EdgeServer, users: UserStore, database_url: str, publisher: Publisher
) -> None:
    users.add("ivan", "pw-ivan-123", ("team",), ())
    env = {**os.environ, "WARREN_ENV": "development", "WARREN_DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "listen", "--user", "ivan", "--type", "report.ready",
        "--url", url(edge.port), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        while b"connected" not in await within(process.stderr.readline()):
            pass
        await publish(publisher, Address.group("team"), "chat.token", n=0)
        sent = await publish(publisher, Address.user("ivan"), "report.ready", n=1)
        line = orjson.loads(await within(process.stdout.readline()))
        assert line == {"v": 1, "id": sent.id, "type": "report.ready", "ts": sent.ts,
                        "to": "user:ivan", "from": "service:reports", "data": {"n": 1}}
    finally:
        process.send_signal(signal.SIGINT)
        code = await within(process.wait())
    assert code == 0


# -- the in-band replay.done (docs/protocol.md 17.5; real edges: tests/chaos/test_inband_replay.py)

def in_band_done(**data: object) -> str:
    return orjson.dumps({"type": "replay.done", "data": data}).decode()


async def test_an_in_band_replay_is_told_after_it_with_its_position_and_repeats_dropped(
    tiny: Callable[[tornado.web.Application], int], closing: list[Client]
) -> None:
    port = tiny(scripted([
        welcome_frame(position=100.0, window=2.0),
        event_frame("a", 101.0), event_frame("b", 102.0),
        # The edge's broker connection broke and came back: its replay from since - window.
        event_frame("b", 102.0), event_frame("c", 103.0),
        in_band_done(events=2, position=110.0, since=102.5, recovered=True),
        event_frame("d", 110.5),
    ]))
    client = Client(url(port), token="t")
    closing.append(client)
    recoveries: list[Recovery] = []
    client.on_recovery(recoveries.append)
    states: list[StateChange] = []
    client.on_state(states.append)
    errors: list[WarrenError] = []
    client.on_error(errors.append)
    events = client.events()
    await within(client.connect())

    assert [(await next_event(events)).id for _ in range(4)] == ["a", "b", "c", "d"]
    assert recoveries == [
        Recovery(None),
        Recovery(True, None, None, 102.5, 2, in_band=True),
    ]
    assert client.recovery == recoveries[-1]
    assert [change.state for change in states] == ["connecting", "connected"]
    assert client.position == 110.5
    assert (client.stats.duplicates, client.stats.replayed, client.stats.in_band_recovered,
            client.stats.in_band_not_recovered, client.stats.garbage_frames) == (1, 2, 1, 0, 0)
    assert errors == []


async def test_an_in_band_recovered_false_says_why_and_the_position_is_the_edges(
    tiny: Callable[[tornado.web.Application], int], closing: list[Client]
) -> None:
    port = tiny(scripted([
        welcome_frame(position=200.0, window=2.0),
        event_frame("x", 201.0),
        in_band_done(events=0, position=250.0, since=201.0, recovered=False, reason="too_old",
                     oldest=230.0),
        in_band_done(events=0, position=260.0, since=250.0, recovered=False,
                     reason="history_off", oldest=None),
        event_frame("z", 260.5),
    ]))
    client = Client(url(port), token="t")
    closing.append(client)
    told: list[Recovery] = []
    client.on_recovery(lambda recovery: told.append(recovery) if recovery.in_band else None)
    events = client.events()
    await within(client.connect())
    assert (await next_event(events)).id == "x"
    assert (await next_event(events)).id == "z"  # frames are handled in order: both came

    assert told == [
        Recovery(False, "too_old", 230.0, 201.0, 0, in_band=True),
        Recovery(False, "history_off", None, 250.0, 0, in_band=True),
    ]
    assert client.position == 260.5
    assert client.stats.in_band_not_recovered == 2


async def test_a_replay_done_of_neither_form_is_garbage(
    tiny: Callable[[tornado.web.Application], int], closing: list[Client]
) -> None:
    port = tiny(scripted([
        welcome_frame(position=300.0),
        replay_done_frame(3, 301.0),  # no replay going on, and not the in-band form
        in_band_done(events=1, recovered=True),  # in band, without a position
        event_frame("y", 300.5),
    ]))
    client = Client(url(port), token="t")
    closing.append(client)
    reported: list[WarrenError] = []
    client.on_error(reported.append)
    events = client.events()
    await within(client.connect())
    assert (await next_event(events)).id == "y"
    assert [error.code for error in reported] == ["garbage_frame", "garbage_frame"]
    assert client.position == 300.5
    assert client.recovery == Recovery(None)
