"""cat_relay end to end: WebSocket client -> edge -> broker -> relay -> Cat (v1 double) -> back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from prometheus_client import CollectorRegistry
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from aio_pika.abc import AbstractIncomingMessage

from shared.messaging import Address, Envelope, decode
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command, dead_letter_queue_name, work_queue_name
from services.cat_relay.server import RelayServer
from services.cat_relay.settings import RelaySettings
from services.ws_edge.server import EdgeServer
from tests.support.cat_v1 import CatV1Double, reply_for
from tests.support.client import Client
from tests.support.relay import SERVICE_KEY, Chat, relay_env


@pytest.fixture
async def cat() -> AsyncIterator[CatV1Double]:
    double = CatV1Double().start()
    yield double
    double.hold.set()
    await double.stop()


@pytest.fixture
async def make_relay(
    amqp_url: str, database_url: str, cat: CatV1Double
) -> AsyncIterator[Callable[..., RelayServer]]:
    built: list[RelayServer] = []

    def build(**overrides: str) -> RelayServer:
        settings = RelaySettings.from_env(relay_env(amqp_url, database_url, cat.url, **overrides))
        server = RelayServer(settings, CollectorRegistry())
        built.append(server)
        return server

    yield build
    for server in built:
        await server.stop()


@pytest.fixture
async def relay(make_relay: Callable[..., RelayServer]) -> RelayServer:
    server = make_relay()
    await server.start()
    return server


async def chat_for(edge: EdgeServer, token: str) -> Chat:
    return Chat(await Client.connect(edge.port, token))


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


async def test_two_users_get_only_their_own_replies(
    edge: EdgeServer, relay: RelayServer, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    bob = await chat_for(edge, token_for("bob"))
    alice_id, bob_id = await alice.ask("from alice"), await bob.ask("from bob")

    (_, a), (_, b) = await asyncio.gather(alice.outcome(alice_id), bob.outcome(bob_id))
    assert a["data"]["text"] == reply_for("from alice")
    assert b["data"]["text"] == reply_for("from bob")
    # Nothing of the other user's answer reached either socket.
    for chat, other in ((alice, bob_id), (bob, alice_id)):
        assert all(f.get("data", {}).get("ask_id") != other for f in chat.frames)


async def test_one_users_asks_are_answered_in_order_over_one_cat_socket_across_replicas(
    edge: EdgeServer,
    make_relay: Callable[..., RelayServer],
    cat: CatV1Double,
    token_for: Callable[..., str],
) -> None:
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
    assert cat.asks["alice"] == texts  # the Cat saw them one by one, in order
    assert cat.max_open["alice"] == 1  # never two sockets for one user


async def test_cat_error_frame_becomes_chat_error(
    edge: EdgeServer, relay: RelayServer, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    _, final = await alice.outcome(await alice.ask("!error"))
    assert final["type"] == "chat.error"
    assert final["data"]["code"] == "cat_error"
    assert "the model failed" in final["data"]["message"]


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


async def test_slow_cat_gives_cat_timeout(
    edge: EdgeServer, make_relay: Callable[..., RelayServer], token_for: Callable[..., str]
) -> None:
    await make_relay(WARREN_CAT_TIMEOUT_S="0.3").start()
    alice = await chat_for(edge, token_for("alice"))
    _, final = await alice.outcome(await alice.ask("!hold"))
    assert final["type"] == "chat.error" and final["data"]["code"] == "cat_timeout"


async def test_relay_drains_an_ask_in_flight_on_stop(
    edge: EdgeServer, relay: RelayServer, cat: CatV1Double, token_for: Callable[..., str]
) -> None:
    alice = await chat_for(edge, token_for("alice"))
    held = await alice.ask("!hold")
    await asyncio.wait_for(cat.holding.wait(), 10)
    stopping = asyncio.ensure_future(relay.stop())
    await asyncio.sleep(0)  # let stop() begin before the Cat answers
    cat.hold.set()
    _, final = await alice.outcome(held)
    assert final["type"] == "chat.reply"
    await asyncio.wait_for(stopping, 10)


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
        raise_error=False, request_timeout=15,
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


@pytest.mark.parametrize(
    ("body", "credential", "status", "error"),
    [
        (b"not json", "key", 400, "bad_request"),
        ([1, 2], "key", 400, "bad_request"),
        ({"message": "hi"}, "key", 400, "bad_request"),
        ({"user_id": "a b", "message": "hi"}, "key", 400, "bad_request"),
        ({"user_id": "alice", "message": ""}, "key", 400, "bad_request"),
        ({"user_id": "alice", "message": 5}, "key", 400, "bad_request"),
        ({"user_id": "alice", "message": "hi"}, None, 401, "token_missing"),
        ({"user_id": "alice", "message": "hi"}, "not-a-token", 401, "token_invalid"),
        ({"user_id": "alice", "message": "hi"}, "bob", 403, "forbidden"),
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
    response = await post_send(relay, body, credential)
    assert response.code == status
    assert orjson.loads(response.body)["error"] == error


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
    metrics = (await http.fetch(f"{base}/metrics")).body.decode()
    assert 'warren_relay_asks_total{source="http"} 1.0' in metrics
    assert "warren_relay_cat_latency_seconds_count 1.0" in metrics
    assert "warren_relay_cat_sockets 1.0" in metrics  # the v1 socket is kept for reuse

    await cat.stop()
    with pytest.raises(HTTPClientError) as refused:
        await http.fetch(f"{base}/readyz/cat")
    assert refused.value.code == 503
    assert (await http.fetch(f"{base}/readyz")).code == 200  # the broker is still there
