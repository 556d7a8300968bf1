"""cat_relay against a real Cheshire Cat 2.x (installed by scripts/test into .venv-cat)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
import pytest
import tornado.web
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from shared.db import make_engine, session_factory
from shared.db.chat import ChatTurn
from services.cat_relay.cat import detect_protocol
from services.cat_relay.server import RelayServer
from services.cat_relay.settings import CatProtocol, CatSettings, RelaySettings
from services.ws_edge.server import EdgeServer
from tests.support.cat_v1 import CatV1Double
from tests.support.cat_v2 import CatV2Process, cat_python
from tests.support.client import Client
from tests.support.relay import SERVICE_KEY, Chat, relay_env

NO_MODEL = "No Language Model is configured yet. Choose one in the settings!"


@pytest.fixture(scope="session")
def cat_v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatV2Process]:
    python = cat_python()
    if python is None:
        pytest.skip(
            "Cheshire Cat 2.x is not installed in .venv-cat: scripts/test could not "
            "pip install cheshire-cat-ai on this machine (see its output)"
        )
    cat = CatV2Process(python, tmp_path_factory.mktemp("cat-v2")).start()
    yield cat
    cat.stop()


@pytest.fixture
async def relay_v2(
    amqp_url: str, database_url: str, cat_v2: CatV2Process
) -> AsyncIterator[RelayServer]:
    env = relay_env(amqp_url, database_url, cat_v2.url, WARREN_CAT_PROTOCOL="auto")
    server = RelayServer(RelaySettings.from_env(env), CollectorRegistry())
    await server.start()
    yield server
    await server.stop()


def settings_for(url: str) -> CatSettings:
    return CatSettings.from_env({"WARREN_CAT_URL": url}, development=True)


async def test_protocol_is_detected_from_the_status_endpoint(cat_v2: CatV2Process) -> None:
    assert await detect_protocol(settings_for(cat_v2.url)) is CatProtocol.V2
    double = CatV1Double().start()
    try:
        assert await detect_protocol(settings_for(double.url)) is CatProtocol.V1
    finally:
        await double.stop()


async def test_a_real_cat_without_a_language_model_is_cat_no_llm_naming_its_settings_page(
    edge: EdgeServer, relay_v2: RelayServer, cat_v2: CatV2Process, token_for: Callable[..., str],
    database_url: str,
) -> None:
    # The Cat installed for the tests has no model: it answers everything with NO_MODEL.
    alice = Chat(await Client.connect(edge.port, token_for("alice")))
    for question in ("hello", "and again"):
        tokens, final = await alice.outcome(await alice.ask(question))
        assert final["type"] == "chat.error" and final["data"]["code"] == "cat_no_llm", final
        assert not tokens
        assert f"{cat_v2.url}/#/settings" in final["data"]["message"]

    # The page named is the Cat's own web UI.
    page = await AsyncHTTPClient().fetch(f"{cat_v2.url}/")
    assert b"<title>Cheshire Cat</title>" in page.body
    # A non-answer is no turn of the conversation.
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            assert session.scalar(select(func.count()).select_from(ChatTurn)) == 0
    finally:
        engine.dispose()


async def send(relay: RelayServer, user_id: str, message: str) -> tuple[int, dict[str, Any]]:
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{relay.port}/send", method="POST", raise_error=False,
        body=orjson.dumps({"user_id": user_id, "message": message}),
        headers={"Authorization": f"Bearer {SERVICE_KEY}"}, request_timeout=30,
    )
    return response.code, orjson.loads(response.body)


async def test_send_over_http_to_a_real_cat_without_a_model_is_502_cat_no_llm(
    relay_v2: RelayServer, cat_v2: CatV2Process
) -> None:
    code, body = await send(relay_v2, "bob", "hi")
    assert code == 502 and body["error"] == "cat_no_llm", body
    assert f"{cat_v2.url}/#/settings" in body["message"]


async def test_a_wrong_cat_key_is_a_cat_error(
    amqp_url: str, database_url: str, cat_v2: CatV2Process
) -> None:
    env = relay_env(amqp_url, database_url, cat_v2.url, WARREN_CAT_PROTOCOL="v2",
                    WARREN_CAT_API_KEY="wrong-key")
    wrong = RelayServer(RelaySettings.from_env(env), CollectorRegistry())
    await wrong.start()
    try:
        code, body = await send(wrong, "bob", "hi")
        assert code == 502 and body["error"] == "cat_error", body
    finally:
        await wrong.stop()


async def test_cat_status_reports_version_2(relay_v2: RelayServer) -> None:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{relay_v2.port}/readyz/cat")
    status = orjson.loads(response.body)
    assert status["cat"] == "reachable" and status["protocol"] == "v2"
    assert status["version"].startswith("2.")


class StreamingCat(tornado.web.RequestHandler):
    """A v2 agent that streams its reply as AG-UI events and records what it was sent.

    Texts steer it: ``!fail`` ends the run with ``RUN_ERROR``, ``!drop`` closes the
    connection mid-stream, ``!hold`` waits for ``hold`` before answering, ``!say <words>``
    answers ``<words>``. ``pace_s`` spaces the events out; ``max_busy`` is the most
    requests it answered at once.
    """

    def initialize(self, stub: StubCat) -> None:
        self.stub = stub

    async def post(self, slug: str) -> None:
        if self.request.headers.get("Authorization") != "Bearer meow":
            self.set_status(403)
            self.finish({"detail": "Invalid Credentials"})
            return
        body = orjson.loads(self.request.body)
        self.stub.bodies.append(body)
        self.stub.busy += 1
        self.stub.max_busy = max(self.stub.max_busy, self.stub.busy)
        try:
            await self._stream(body)
        finally:
            self.stub.busy -= 1

    async def _stream(self, body: dict[str, Any]) -> None:
        text = body["messages"][-1]["content"][0]["text"]
        reply = text.removeprefix("!say ") if text.startswith("!say ") else f"v2 says {text}"
        self.set_header("Content-Type", "text/event-stream")
        events: list[dict[str, Any]] = [{"type": "RUN_STARTED"}]
        events += [{"type": "TEXT_MESSAGE_CONTENT", "delta": reply[i:i + 4]} for i in range(0, len(reply), 4)]
        if text == "!fail":
            events.append({"type": "RUN_ERROR", "message": "the agent failed"})
        else:
            events.append({"type": "RUN_FINISHED", "result": {"messages": [{"role": "assistant", "text": reply}]}})
        for n, event in enumerate(events):
            if n == 2 and text == "!drop":
                assert self.request.connection is not None
                self.request.connection.close()  # type: ignore[attr-defined]
                return
            if n == 2 and text == "!hold":
                self.stub.holding.set()
                await self.stub.hold.wait()
            if n and self.stub.pace_s:
                await asyncio.sleep(self.stub.pace_s)  # a model producing its next token
            self.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await self.flush()


class StubCat:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.hold = asyncio.Event()
        self.holding = asyncio.Event()  # set while an answer waits on ``hold``
        self.pace_s = 0.0
        self.busy = 0
        self.max_busy = 0
        sockets = bind_sockets(0, "127.0.0.1")
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self.server = HTTPServer(
            tornado.web.Application([(r"/agents/([^/]+)/message", StreamingCat, {"stub": self})])
        )
        self.server.add_sockets(sockets)

    async def stop(self) -> None:
        self.hold.set()
        self.server.stop()
        await self.server.close_all_connections()


@pytest.fixture
async def stub() -> AsyncIterator[StubCat]:
    cat = StubCat()
    yield cat
    await cat.stop()


@pytest.fixture
async def make_stub_relay(
    amqp_url: str, database_url: str, stub: StubCat
) -> AsyncIterator[Callable[..., RelayServer]]:
    built: list[RelayServer] = []

    def build(**overrides: str) -> RelayServer:
        env = relay_env(amqp_url, database_url, stub.url, WARREN_CAT_PROTOCOL="v2",
                        WARREN_RELAY_TOKEN_FLUSH_CHARS="1", **overrides)
        relay = RelayServer(RelaySettings.from_env(env), CollectorRegistry())
        built.append(relay)
        return relay

    yield build
    stub.hold.set()
    for relay in built:
        await relay.stop()


def texts(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"][0]["text"]) for m in body["messages"]]


async def test_v2_tokens_stream_and_history_is_sent_with_each_ask(
    make_stub_relay: Callable[..., RelayServer], stub: StubCat, edge: EdgeServer,
    token_for: Callable[..., str],
) -> None:
    await make_stub_relay(WARREN_RELAY_HISTORY_TURNS="3").start()
    alice = Chat(await Client.connect(edge.port, token_for("alice")))
    for question in ("one", "two", "three"):
        tokens, final = await alice.outcome(await alice.ask(question))
        assert final["data"]["text"] == f"v2 says {question}"
        assert "".join(t["data"]["text"] for t in tokens) == f"v2 says {question}"

    assert texts(stub.bodies[0]) == [("user", "one")]
    assert texts(stub.bodies[1]) == [("user", "one"), ("assistant", "v2 says one"), ("user", "two")]
    # Bounded to the newest three turns, then the new question.
    assert texts(stub.bodies[2]) == [
        ("assistant", "v2 says one"), ("user", "two"), ("assistant", "v2 says two"), ("user", "three")
    ]
    assert all(body["stream"] is True for body in stub.bodies)


@pytest.mark.parametrize("replicas", [1, 2])
async def test_v2_asks_go_one_at_a_time_and_history_stays_in_order(
    make_stub_relay: Callable[..., RelayServer], stub: StubCat, edge: EdgeServer,
    token_for: Callable[..., str], replicas: int,
) -> None:
    for _ in range(replicas):
        await make_stub_relay().start()
    alice = Chat(await Client.connect(edge.port, token_for("alice")))
    await alice.outcome(await alice.ask("q0"))  # alice's session is set up
    held = await alice.ask("!hold", ref="held")
    await asyncio.wait_for(stub.holding.wait(), 10)
    questions = [f"q{n}" for n in range(1, 6)]
    ids = [await alice.ask(q, ref=q) for q in questions]  # they queue up behind the held one
    stub.hold.set()
    await alice.outcome(held)
    for q, ask_id in zip(questions, ids):
        _, final = await alice.outcome(ask_id)
        assert final["data"]["text"] == f"v2 says {q}"
    # Each ask was sent with every earlier turn, in order: none overtook another.
    last = texts(stub.bodies[-1])
    assert [t for role, t in last if role == "user"] == ["q0", "!hold", *questions]
    assert stub.max_busy == 1  # one ask at a time


@pytest.mark.parametrize(
    ("text", "code"), [("!fail", "cat_error"), ("!drop", "cat_unavailable"), ("!hold", "cat_timeout")]
)
async def test_v2_failures_become_chat_errors_and_the_relay_goes_on(
    make_stub_relay: Callable[..., RelayServer], edge: EdgeServer, token_for: Callable[..., str],
    text: str, code: str,
) -> None:
    await make_stub_relay(WARREN_CAT_TIMEOUT_S="0.5").start()
    alice = Chat(await Client.connect(edge.port, token_for("alice")))
    _, final = await alice.outcome(await alice.ask(text))
    assert final["type"] == "chat.error" and final["data"]["code"] == code, final
    _, final = await alice.outcome(await alice.ask("still there?"))
    assert final["type"] == "chat.reply" and final["data"]["text"] == "v2 says still there?"


async def test_a_model_streaming_the_placeholders_words_is_an_ordinary_reply(
    make_stub_relay: Callable[..., RelayServer], edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    # Only the placeholder model answers with the sentence unstreamed; a real model
    # asked to repeat it streams it, and its answer is the user's.
    await make_stub_relay().start()
    alice = Chat(await Client.connect(edge.port, token_for("alice")))
    tokens, final = await alice.outcome(await alice.ask(f"!say {NO_MODEL}"))
    assert tokens and final["type"] == "chat.reply" and final["data"]["text"] == NO_MODEL


async def test_v2_cat_unreachable_is_cat_unavailable(
    amqp_url: str, database_url: str, edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    closed = bind_sockets(0, "127.0.0.1")
    url = f"http://127.0.0.1:{closed[0].getsockname()[1]}"
    closed[0].close()  # nothing listens there
    env = relay_env(amqp_url, database_url, url, WARREN_CAT_PROTOCOL="v2")
    relay = RelayServer(RelaySettings.from_env(env), CollectorRegistry())
    await relay.start()
    try:
        alice = Chat(await Client.connect(edge.port, token_for("alice")))
        _, final = await alice.outcome(await alice.ask("anyone?"))
        assert final["type"] == "chat.error" and final["data"]["code"] == "cat_unavailable"
    finally:
        await relay.stop()
