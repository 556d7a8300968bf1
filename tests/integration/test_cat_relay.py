"""cat_relay end to end: WebSocket client -> edge -> broker -> relay -> Cat (v1 double) -> back."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from shared.db import UserStore
from shared.messaging import Address, Envelope, decode
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command, dead_letter_queue_name, work_queue_name
from services.cat_relay.server import RelayServer
from services.cat_relay.settings import RelaySettings
from services.ws_edge.server import EdgeServer
from tests.support.cat_v1 import CatV1Double, reply_for
from tests.support.logs import LogSeen
from tests.support.rabbit import BrokerAdmin, reconnected
from tests.support.relay import (  # noqa: F401  (the fixtures cat and make_relay)
    SERVICE_KEY, Chat, RelayProcess, cat, chat_for, make_relay, relay_env,
)



@pytest.fixture
async def relay(make_relay: Callable[..., RelayServer]) -> RelayServer:
    server = make_relay()
    await server.start()
    return server


@pytest.fixture
async def spawn_relay(
    amqp_url: str, database_url: str, cat: CatV1Double
) -> AsyncIterator[Callable[..., Awaitable[RelayProcess]]]:
    started: list[RelayProcess] = []

    async def spawn(**overrides: str) -> RelayProcess:
        process = RelayProcess(relay_env(amqp_url, database_url, cat.url, **overrides))
        started.append(process)
        return await process.start()

    yield spawn
    cat.hold.set()
    for process in started:
        await process.kill()



def metric(relay: RelayServer, name: str, **labels: str) -> float:
    value = relay.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_ask_streams_tokens_then_the_reply(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], token_for: Callable[..., str]
) -> None:
    await make_relay(WARREN_RELAY_TOKEN_FLUSH_CHARS="1").start()  # every token goes out at once
    alice = await chat_for(edge, token_for("alice"))
    ask_id = await alice.ask("hello cat")
    tokens, final = await alice.outcome(ask_id)

    assert final["type"] == "chat.reply"
    assert final["data"] == {"ask_id": ask_id, "text": reply_for("hello cat")}
    assert final["from"] == "service:cat_relay" and final["to"] == "user:alice"
    assert tokens, "the Cat streamed tokens, so chat.token events must arrive"
    assert [t["data"]["seq"] for t in tokens] == list(range(len(tokens)))
    assert "".join(t["data"]["text"] for t in tokens) == reply_for("hello cat")


async def test_two_users_at_once_get_only_their_own_tokens_and_replies(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    cat.pace_s = 0.002  # both answers stream at the same time
    await make_relay(WARREN_RELAY_TOKEN_FLUSH_CHARS="1").start()
    alice = await chat_for(edge, token_for("alice"))
    bob = await chat_for(edge, token_for("bob"))
    alice_id, bob_id = await alice.ask("from alice"), await bob.ask("from bob")

    (a_tokens, a), (b_tokens, b) = await asyncio.gather(alice.outcome(alice_id), bob.outcome(bob_id))
    assert a["data"]["text"] == reply_for("from alice")
    assert b["data"]["text"] == reply_for("from bob")
    assert "".join(t["data"]["text"] for t in a_tokens) == reply_for("from alice")
    assert "".join(t["data"]["text"] for t in b_tokens) == reply_for("from bob")
    # Nothing of the other user's answer reached either socket.
    for chat, other in ((alice, bob_id), (bob, alice_id)):
        assert all(f.get("data", {}).get("ask_id") != other for f in chat.frames)


async def test_after_the_first_ask_the_dispatcher_answers_without_the_session_hop(
    edge: EdgeServer, relay: RelayServer, cat: CatV1Double, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    for n in range(4):
        _, final = await alice.outcome(await alice.ask(f"q{n}"))
        assert final["data"]["text"] == reply_for(f"q{n}")
    # The first ask set up alice's session through her session queue; the others were
    # answered by the replica that took them off chat.ask, over the same Cat socket.
    assert metric(relay, "warren_relay_routed_total", route="session") == 1
    assert metric(relay, "warren_relay_routed_total", route="local") == 3
    assert cat.max_open["alice"] == 1 and cat.open_count["alice"] == 1


async def test_one_users_asks_are_answered_in_order_one_at_a_time_over_one_socket_across_replicas(
    edge: EdgeServer,
    make_relay: Callable[..., RelayServer],
    cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    cat.pace_s = 0.001
    for _ in range(3):
        await make_relay().start()
    alice = await chat_for(edge, token_for("alice"))
    texts = [f"question {i}" for i in range(12)]
    ids = [await alice.ask(text, ref=str(i)) for i, text in enumerate(texts)]

    replies = []
    for ask_id in ids:
        _, final = await alice.outcome(ask_id)
        replies.append(final["data"]["text"])
    assert replies == [reply_for(t) for t in texts]
    assert cat.asks["alice"] == texts  # the Cat saw them in order
    assert cat.max_busy["alice"] == 1  # one at a time
    assert cat.max_open["alice"] == 1  # never two sockets for one user


async def test_sessions_spread_over_the_replicas(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], token_for: Callable[..., str]
) -> None:
    relays = [make_relay(), make_relay()]
    for relay in relays:
        await relay.start()
    users = [f"user{i}" for i in range(8)]
    chats = [await chat_for(edge, token_for(u)) for u in users]
    asks = [await chat.ask("hi") for chat in chats]
    for chat, ask_id in zip(chats, asks):
        _, final = await chat.outcome(ask_id)
        assert final["type"] == "chat.reply"
    # Claims go round robin: each replica took some of the sessions.
    assert [len(r.sessions or ()) for r in relays] == [4, 4]


async def test_cat_error_frame_becomes_chat_error(
    edge: EdgeServer, relay: RelayServer, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    _, final = await alice.outcome(await alice.ask("!error"))
    assert final["type"] == "chat.error"
    assert final["data"]["code"] == "cat_error"
    assert "the model failed" in final["data"]["message"]


async def test_a_cat_without_a_language_model_is_cat_no_llm_naming_its_admin_page(
    edge: EdgeServer, relay: RelayServer, cat: CatV1Double, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    _, final = await alice.outcome(await alice.ask("!no-llm"))
    assert final["type"] == "chat.error" and final["data"]["code"] == "cat_no_llm", final
    assert f"{cat.url}/admin/" in final["data"]["message"]
    assert metric(relay, "warren_relay_errors_total", code="cat_no_llm") == 1
    _, final = await alice.outcome(await alice.ask("hi"))  # the same socket goes on
    assert final["type"] == "chat.reply" and final["data"]["text"] == reply_for("hi")


async def test_notifications_from_plugins_are_not_part_of_the_reply(
    edge: EdgeServer, relay: RelayServer, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    tokens, final = await alice.outcome(await alice.ask("!notify"))
    assert final["data"]["text"] == reply_for("!notify")
    # Tokens still waiting for their batch when the reply is ready are not sent.
    assert reply_for("!notify").startswith("".join(t["data"]["text"] for t in tokens))


async def test_bad_ask_gets_bad_request(
    edge: EdgeServer, relay: RelayServer, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    for bad in (None, "   ", "x" * 9000):
        _, final = await alice.outcome(await alice.ask(bad))
        assert final["type"] == "chat.error" and final["data"]["code"] == "bad_request", final


async def test_cat_down_mid_ask_gives_chat_error_and_the_relay_recovers(
    edge: EdgeServer, relay: RelayServer, cat: CatV1Double, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    held = await alice.ask("!hold")
    await asyncio.wait_for(cat.holding.wait(), 10)
    port = cat.port
    await cat.stop()

    _, final = await alice.outcome(held)
    assert final["type"] == "chat.error" and final["data"]["code"] == "cat_unavailable"
    _, final = await alice.outcome(await alice.ask("while down"))
    assert final["data"]["code"] == "cat_unavailable"

    back = CatV1Double(port=port).start()
    try:
        _, final = await alice.outcome(await alice.ask("after"))
        assert final["type"] == "chat.reply" and final["data"]["text"] == reply_for("after")
    finally:
        await back.stop()
    assert metric(relay, "warren_relay_errors_total", code="cat_unavailable") == 2
    assert metric(relay, "warren_relay_replies_total") == 1


async def test_the_relay_reconnects_with_backoff_while_the_cat_comes_up(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    await make_relay(WARREN_CAT_CONNECT_TIMEOUT_S="20").start()
    port = cat.port
    await cat.stop()
    refused = LogSeen("cat socket connect failed")
    logger = logging.getLogger("services.cat_relay.cat.v1")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(refused)
    try:
        alice = await chat_for(edge, token_for("alice"))
        ask_id = await alice.ask("are you there?")
        await asyncio.wait_for(refused.seen.wait(), 10)  # the first attempt failed
        back = CatV1Double(port=port).start()
        try:
            _, final = await alice.outcome(ask_id)
        finally:
            await back.stop()
    finally:
        logger.removeHandler(refused)
        logger.setLevel(level)
    assert final["type"] == "chat.reply" and final["data"]["text"] == reply_for("are you there?")


async def test_protocol_auto_detection_waits_for_a_cat_that_starts_after_the_relay(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    port = cat.port
    await cat.stop()
    relay = make_relay(WARREN_CAT_PROTOCOL="auto")
    await relay.start()
    alice = await chat_for(edge, token_for("alice"))
    _, final = await alice.outcome(await alice.ask("too early"))
    assert final["type"] == "chat.error" and final["data"]["code"] == "cat_unavailable"

    back = CatV1Double(port=port).start()
    try:
        _, final = await alice.outcome(await alice.ask("now"))
        assert final["type"] == "chat.reply" and final["data"]["text"] == reply_for("now")
        status = orjson.loads(
            (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{relay.port}/readyz/cat")).body
        )
        assert status["protocol"] == "v1" and status["version"] == "1.8.1"
    finally:
        await back.stop()


async def test_slow_cat_gives_cat_timeout_and_the_next_ask_gets_its_own_answer(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    await make_relay(WARREN_CAT_TIMEOUT_S="0.3").start()
    alice = await chat_for(edge, token_for("alice"))
    _, final = await alice.outcome(await alice.ask("!hold"))
    assert final["type"] == "chat.error" and final["data"]["code"] == "cat_timeout"
    cat.hold.set()  # the late answer goes to a socket the relay has closed
    _, final = await alice.outcome(await alice.ask("next"))
    assert final["type"] == "chat.reply" and final["data"]["text"] == reply_for("next")


async def test_an_idle_cat_socket_is_closed_and_reopened_for_the_next_ask(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    relay = make_relay(WARREN_CAT_IDLE_S="0.2")
    await relay.start()
    alice = await chat_for(edge, token_for("alice"))
    _, final = await alice.outcome(await alice.ask("one"))
    await asyncio.wait_for(cat.closed["alice"].wait(), 10)
    assert cat.open_count["alice"] == 0
    assert metric(relay, "warren_relay_cat_sockets") == 0
    _, final = await alice.outcome(await alice.ask("two"))
    assert final["data"]["text"] == reply_for("two")
    assert metric(relay, "warren_relay_cat_sockets") == 1


async def test_an_idle_session_is_let_go_and_taken_again(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    relay = make_relay(WARREN_RELAY_SESSION_IDLE_S="0.2")
    await relay.start()
    alice = await chat_for(edge, token_for("alice"))
    await alice.outcome(await alice.ask("one"))
    assert relay.sessions is not None
    assert await relay.sessions.wait_released(10)
    assert cat.open_count["alice"] == 0  # the socket goes with the session
    assert metric(relay, "warren_relay_sessions") == 0
    _, final = await alice.outcome(await alice.ask("two"))
    assert final["data"]["text"] == reply_for("two")
    assert metric(relay, "warren_relay_routed_total", route="session") == 2


async def test_relay_drains_an_ask_in_flight_on_stop(
    edge: EdgeServer, relay: RelayServer, cat: CatV1Double, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    held = await alice.ask("!hold")
    await asyncio.wait_for(cat.holding.wait(), 10)
    stopping = asyncio.ensure_future(relay.stop())
    await asyncio.sleep(0)  # let stop() begin before the Cat answers
    assert not relay.is_ready()
    cat.hold.set()
    _, final = await alice.outcome(held)
    assert final["type"] == "chat.reply"
    await asyncio.wait_for(stopping, 10)


async def test_an_ask_still_running_at_the_shutdown_deadline_is_answered_interrupted(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    relay = make_relay(WARREN_RELAY_SHUTDOWN_DEADLINE_S="0.5")
    await relay.start()
    alice = await chat_for(edge, token_for("alice"))
    held = await alice.ask("!hold")
    await asyncio.wait_for(cat.holding.wait(), 10)
    await asyncio.wait_for(relay.stop(), 10)  # the Cat never answers
    _, final = await alice.outcome(held)
    assert final["type"] == "chat.error" and final["data"]["code"] == "interrupted", final
    assert metric(relay, "warren_relay_cat_sockets") == 0  # its Cat socket closed on the way out


async def test_a_stopping_replica_answers_what_it_holds_then_hands_the_session_over(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    first = make_relay()
    await first.start()
    alice = await chat_for(edge, token_for("alice"))
    await alice.outcome(await alice.ask("hello"))  # the first replica owns alice's session
    second = make_relay()
    await second.start()

    held = await alice.ask("!hold", ref="held")
    await asyncio.wait_for(cat.holding.wait(), 10)
    stopping = asyncio.ensure_future(first.stop())
    later = [await alice.ask(f"later {n}", ref=f"later{n}") for n in range(3)]
    cat.hold.set()

    _, final = await alice.outcome(held)
    assert final["type"] == "chat.reply", final
    for n, ask_id in enumerate(later):
        _, final = await alice.outcome(ask_id)
        assert final["data"]["text"] == reply_for(f"later {n}"), final
    await asyncio.wait_for(stopping, 20)
    assert cat.asks["alice"] == ["hello", "!hold", "later 0", "later 1", "later 2"]
    assert cat.max_open["alice"] == 1 and cat.max_busy["alice"] == 1
    assert metric(second, "warren_relay_replies_total") >= 1  # the second replica took over


async def test_sigterm_drains_the_ask_in_flight_and_exits_cleanly(
    edge: EdgeServer, spawn_relay: Callable[..., Awaitable[RelayProcess]], cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
    process = await spawn_relay()
    alice = await chat_for(edge, token_for("alice"))
    held = await alice.ask("!hold")
    await asyncio.wait_for(cat.holding.wait(), 10)
    process.signal(signal.SIGTERM)
    await process.wait_log("cat_relay stopping")  # draining, with the answer still to come
    cat.hold.set()
    _, final = await alice.outcome(held)
    assert final["type"] == "chat.reply" and final["data"]["text"] == reply_for("!hold")
    assert await process.exited() == 0, process.tail()
    assert process.messages("cat_relay stopped")


async def test_a_replica_killed_mid_answer_gets_its_ask_answered_interrupted_once(
    edge: EdgeServer, spawn_relay: Callable[..., Awaitable[RelayProcess]],
    make_relay: Callable[..., RelayServer], cat: CatV1Double, token_for: Callable[..., str],
) -> None:
    doomed = await spawn_relay()
    alice = await chat_for(edge, token_for("alice"))
    await alice.outcome(await alice.ask("hello"))  # the doomed replica owns alice's session
    survivor = make_relay()
    await survivor.start()

    held = await alice.ask("!hold")
    await asyncio.wait_for(cat.holding.wait(), 10)
    await doomed.kill()
    _, final = await alice.outcome(held)
    # Not asked again (an ask that kills relays must not loop), and not lost either.
    assert final["type"] == "chat.error" and final["data"]["code"] == "interrupted", final
    assert cat.asks["alice"].count("!hold") == 1

    _, final = await alice.outcome(await alice.ask("and now?"))
    assert final["type"] == "chat.reply" and final["data"]["text"] == reply_for("and now?")
    # Exactly one outcome for the held ask reached alice.
    assert all(f.get("data", {}).get("ask_id") != held for f in alice.frames)


async def test_a_lost_broker_connection_is_recovered(
    edge: EdgeServer, relay: RelayServer, broker_admin: BrokerAdmin, vhost: str,
    token_for: Callable[..., str],
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    await alice.outcome(await alice.ask("before"))
    assert relay.connection is not None and edge.connection is not None
    loop = asyncio.get_running_loop()
    ready_when_lost: asyncio.Future[bool] = loop.create_future()

    def lost(*_args: object) -> None:
        if not ready_when_lost.done():
            ready_when_lost.set_result(relay.is_ready())

    relay.connection.close_callbacks.add(lost)
    restored = asyncio.gather(reconnected(relay.connection), reconnected(edge.connection))

    await broker_admin.close_connections(vhost)
    assert await asyncio.wait_for(ready_when_lost, 30) is False  # not ready without the broker
    await asyncio.wait_for(restored, 30)
    assert relay.is_ready()
    _, final = await alice.outcome(await alice.ask("after"), timeout=30)
    assert final["type"] == "chat.reply" and final["data"]["text"] == reply_for("after")


async def test_poison_command_is_dead_lettered(
    relay: RelayServer, publisher: Publisher, amqp_url: str
) -> None:
    not_from_a_user = Envelope(
        type=Command.CHAT_ASK, to=Address.user("alice"), sender=Address.service("x"), data={"text": "hi"}
    )
    await publisher.publish_command(not_from_a_user)

    connection = await connect(amqp_url, name="dead-letter-reader")
    async with connection:
        channel = await connection.channel()
        dead = await channel.get_queue(dead_letter_queue_name(work_queue_name(Command.CHAT_ASK)))
        arrived: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def take(message: AbstractIncomingMessage) -> None:
            if not arrived.done():
                arrived.set_result(message.body)

        await dead.consume(take, no_ack=True)
        assert decode(await asyncio.wait_for(arrived, 10)).id == not_from_a_user.id


# -- POST /send -----------------------------------------------------------------


async def post_send(relay: RelayServer, body: object, credential: str | None) -> HTTPResponse:
    headers = {"Content-Type": "application/json"}
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{relay.port}/send", method="POST", body=payload, headers=headers,
        raise_error=False, request_timeout=30,
    )


async def test_send_answers_with_the_reply_for_service_key_and_own_jwt(
    relay: RelayServer, token_for: Callable[..., str]
) -> None:
    for credential in (SERVICE_KEY, token_for("alice")):
        response = await post_send(relay, {"user_id": "alice", "message": "hi"}, credential)
        assert response.code == 200, response.body
        assert orjson.loads(response.body) == {"response": reply_for("hi")}
    admin = token_for("root", roles=("admin",))
    response = await post_send(relay, {"user_id": "alice", "message": "hi"}, admin)
    assert response.code == 200
    assert metric(relay, "warren_relay_asks_total", source="http") == 3


async def test_send_as_another_user_needs_the_configured_admin_role(
    make_relay: Callable[..., RelayServer], token_for: Callable[..., str]
) -> None:
    relay = make_relay(WARREN_ADMIN_ROLE="ops")
    await relay.start()
    body = {"user_id": "alice", "message": "hi"}
    response = await post_send(relay, body, token_for("root", roles=("ops",)))
    assert response.code == 200, response.body
    response = await post_send(relay, body, token_for("bob", roles=("admin",)))
    assert response.code == 403 and orjson.loads(response.body)["error"] == "forbidden"


async def test_send_waits_its_turn_behind_the_users_websocket_ask_on_the_same_socket(
    edge: EdgeServer, relay: RelayServer, cat: CatV1Double, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    held = await alice.ask("!hold")
    await asyncio.wait_for(cat.holding.wait(), 10)
    sending = asyncio.ensure_future(post_send(relay, {"user_id": "alice", "message": "hi"}, SERVICE_KEY))
    cat.hold.set()
    _, final = await alice.outcome(held)
    assert final["type"] == "chat.reply"
    response = await sending
    assert orjson.loads(response.body) == {"response": reply_for("hi")}
    assert cat.asks["alice"] == ["!hold", "hi"]
    assert cat.max_open["alice"] == 1 and cat.max_busy["alice"] == 1
    # The HTTP ask's answer went to the HTTP caller only.
    assert all(f.get("data", {}).get("text") != reply_for("hi") for f in alice.frames)


@pytest.mark.parametrize(
    ("body", "credential", "status", "error"),
    [
        (b"not json", "key", 400, "bad_request"),
        ([1, 2], "key", 400, "bad_request"),
        ({"message": "hi"}, "key", 400, "bad_request"),
        ({"user_id": "a b", "message": "hi"}, "key", 400, "bad_request"),
        ({"user_id": "alice", "message": ""}, "key", 400, "bad_request"),
        ({"user_id": "alice", "message": 5}, "key", 400, "bad_request"),
        ({"user_id": "alice", "message": "x" * 9000}, "key", 400, "bad_request"),
        ({"user_id": "alice", "message": "hi"}, None, 401, "token_missing"),
        ({"user_id": "alice", "message": "hi"}, "not-a-token", 401, "token_invalid"),
        ({"user_id": "alice", "message": "hi"}, "expired", 401, "token_expired"),
        ({"user_id": "alice", "message": "hi"}, "bob", 403, "forbidden"),
        ({"user_id": "alice", "message": "!error"}, "key", 502, "cat_error"),
        ({"user_id": "alice", "message": "!no-llm"}, "key", 502, "cat_no_llm"),
    ],
)
async def test_send_refuses_bad_requests(
    relay: RelayServer,
    token_for: Callable[..., str],
    body: object,
    credential: str | None,
    status: int,
    error: str,
) -> None:
    if credential == "key":
        credential = SERVICE_KEY
    elif credential == "bob":
        credential = token_for("bob")
    elif credential == "expired":
        credential = token_for("alice", now=1_000_000)  # expired long ago
    response = await post_send(relay, body, credential)
    assert response.code == status, response.body
    assert orjson.loads(response.body)["error"] == error


async def test_send_refuses_a_token_whose_user_is_not_in_the_users_table(
    make_relay: Callable[..., RelayServer], users: UserStore, token_for: Callable[..., str]
) -> None:
    # As on the edge (protocol.md 5.1): a token outlives the deletion of its user.
    users.add("dave", "pw-dave-123")
    relay = make_relay(WARREN_RELAY_CHECK_USERS="true")
    await relay.start()
    response = await post_send(relay, {"user_id": "dave", "message": "hi"}, token_for("dave"))
    assert response.code == 200, response.body
    for credential, asked_as in (
        (token_for("carol"), "carol"),
        (token_for("carol", roles=("admin",)), "dave"),  # the role does not help
    ):
        response = await post_send(relay, {"user_id": asked_as, "message": "hi"}, credential)
        assert response.code == 401, response.body
        body = orjson.loads(response.body)
        assert body["error"] == "unknown_user" and "carol" in body["message"]
    # The service key speaks for no user: nothing to look up.
    response = await post_send(relay, {"user_id": "carol", "message": "hi"}, SERVICE_KEY)
    assert response.code == 200


async def test_in_production_no_service_key_is_made_so_only_jwts_are_taken(
    make_relay: Callable[..., RelayServer],
) -> None:
    # warren up makes a key in development; a relay never does.
    relay = make_relay(WARREN_ENV="production", WARREN_JWT_SECRET="s" * 40, WARREN_RELAY_API_KEY="")
    await relay.start()
    body = {"user_id": "alice", "message": "hi"}
    for credential, error in ((None, "token_missing"), (SERVICE_KEY, "token_invalid")):
        response = await post_send(relay, body, credential)
        assert response.code == 401 and orjson.loads(response.body)["error"] == error


def test_the_relay_checks_users_unless_in_development(
    amqp_url: str, database_url: str, cat: CatV1Double
) -> None:
    env = relay_env(amqp_url, database_url, cat.url)
    assert RelaySettings.from_env({**env, "WARREN_ENV": "development"}).check_users is False
    production = {**env, "WARREN_ENV": "production", "WARREN_JWT_SECRET": "s" * 40}
    assert RelaySettings.from_env(production).check_users is True


async def test_send_gives_502_when_the_cat_is_down_and_504_when_it_is_slow(
    make_relay: Callable[..., RelayServer], cat: CatV1Double
) -> None:
    relay = make_relay(WARREN_CAT_TIMEOUT_S="0.3")
    await relay.start()
    response = await post_send(relay, {"user_id": "alice", "message": "!hold"}, SERVICE_KEY)
    assert response.code == 504 and orjson.loads(response.body)["error"] == "cat_timeout"

    await cat.stop()
    response = await post_send(relay, {"user_id": "alice", "message": "hi"}, SERVICE_KEY)
    assert response.code == 502 and orjson.loads(response.body)["error"] == "cat_unavailable"


# -- service endpoints ----------------------------------------------------------


async def test_readiness_metrics_and_cat_status(relay: RelayServer, cat: CatV1Double) -> None:
    http = AsyncHTTPClient()
    base = f"http://127.0.0.1:{relay.port}"
    assert (await http.fetch(f"{base}/healthz")).code == 200
    assert orjson.loads((await http.fetch(f"{base}/readyz")).body) == {"status": "ready"}
    status = orjson.loads((await http.fetch(f"{base}/readyz/cat")).body)
    assert status["cat"] == "reachable" and status["version"] == "1.8.1"

    await post_send(relay, {"user_id": "alice", "message": "hi"}, SERVICE_KEY)
    await post_send(relay, {"user_id": "alice", "message": "!error"}, SERVICE_KEY)
    metrics = (await http.fetch(f"{base}/metrics")).body.decode()
    assert 'warren_relay_asks_total{source="http"} 2.0' in metrics
    assert "warren_relay_replies_total 1.0" in metrics
    assert 'warren_relay_errors_total{code="cat_error"} 1.0' in metrics
    assert "warren_relay_cat_latency_seconds_count 2.0" not in metrics  # errors are not latency
    assert "warren_relay_cat_latency_seconds_count 1.0" in metrics
    assert "warren_relay_overhead_seconds_count 1.0" in metrics  # replies only
    assert "warren_relay_cat_sockets 1.0" in metrics  # the v1 socket is kept for reuse
    assert "warren_relay_sessions 1.0" in metrics

    await cat.stop()
    with pytest.raises(HTTPClientError) as refused:
        await http.fetch(f"{base}/readyz/cat")
    assert refused.value.code == 503
    assert (await http.fetch(f"{base}/readyz")).code == 200  # the broker is still there
