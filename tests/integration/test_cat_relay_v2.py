"""cat_relay against a real Cheshire Cat 2.x (installed by scripts/test into .venv-cat)."""

from __future__ import annotations

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


async def test_ask_through_the_edge_gets_the_real_cats_reply_and_history_is_kept(
    edge: EdgeServer, relay_v2: RelayServer, token_for: Callable[..., str], database_url: str
) -> None:
    alice = Chat(await Client.connect(edge.port, token_for("alice")))
    for question in ("hello", "and again"):
        _, final = await alice.outcome(await alice.ask(question))
        assert final["type"] == "chat.reply", final
        assert final["data"]["text"] == NO_MODEL

    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            turns = session.execute(
                select(ChatTurn.role, ChatTurn.text).where(ChatTurn.user_id == "alice").order_by(ChatTurn.id)
            ).all()
            assert session.scalar(select(func.count()).select_from(ChatTurn)) == 4
    finally:
        engine.dispose()
    assert [tuple(t) for t in turns] == [
        ("user", "hello"), ("assistant", NO_MODEL), ("user", "and again"), ("assistant", NO_MODEL)
    ]


async def test_send_over_http_and_wrong_cat_key_is_a_cat_error(
    amqp_url: str, database_url: str, cat_v2: CatV2Process, relay_v2: RelayServer
) -> None:
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{relay_v2.port}/send", method="POST",
        body=orjson.dumps({"user_id": "bob", "message": "hi"}),
        headers={"Authorization": f"Bearer {SERVICE_KEY}"},
    )
    assert orjson.loads(response.body) == {"response": NO_MODEL}

    env = relay_env(amqp_url, database_url, cat_v2.url, WARREN_CAT_PROTOCOL="v2",
                    WARREN_CAT_API_KEY="wrong-key")
    wrong = RelayServer(RelaySettings.from_env(env), CollectorRegistry())
    await wrong.start()
    try:
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{wrong.port}/send", method="POST", raise_error=False,
            body=orjson.dumps({"user_id": "bob", "message": "hi"}),
            headers={"Authorization": f"Bearer {SERVICE_KEY}"},
        )
        assert response.code == 502
        assert orjson.loads(response.body)["error"] == "cat_error"
    finally:
        await wrong.stop()


async def test_cat_status_reports_version_2(relay_v2: RelayServer) -> None:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{relay_v2.port}/readyz/cat")
    status = orjson.loads(response.body)
    assert status["cat"] == "reachable" and status["protocol"] == "v2"
    assert status["version"].startswith("2.")


class StreamingCat(tornado.web.RequestHandler):
    """A v2 agent that streams its reply as AG-UI events and records what it was sent."""

    def initialize(self, bodies: list[dict[str, Any]]) -> None:
        self.bodies = bodies

    async def post(self, slug: str) -> None:
        if self.request.headers.get("Authorization") != "Bearer meow":
            self.set_status(403)
            self.finish({"detail": "Invalid Credentials"})
            return
        body = orjson.loads(self.request.body)
        self.bodies.append(body)
        text = body["messages"][-1]["content"][0]["text"]
        reply = f"v2 says {text}"
        self.set_header("Content-Type", "text/event-stream")
        events: list[dict[str, Any]] = [{"type": "RUN_STARTED"}]
        events += [{"type": "TEXT_MESSAGE_CONTENT", "delta": reply[i:i + 4]} for i in range(0, len(reply), 4)]
        events.append({"type": "RUN_FINISHED", "result": {"messages": [{"role": "assistant", "text": reply}]}})
        for event in events:
            self.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await self.flush()


async def test_v2_tokens_stream_and_history_is_sent_with_each_ask(
    amqp_url: str, database_url: str, edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    bodies: list[dict[str, Any]] = []
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(tornado.web.Application([(r"/agents/([^/]+)/message", StreamingCat, {"bodies": bodies})]))
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    env = relay_env(amqp_url, database_url, url, WARREN_CAT_PROTOCOL="v2",
                    WARREN_RELAY_HISTORY_TURNS="3", WARREN_RELAY_TOKEN_FLUSH_CHARS="1")
    relay = RelayServer(RelaySettings.from_env(env), CollectorRegistry())
    await relay.start()
    try:
        alice = Chat(await Client.connect(edge.port, token_for("alice")))
        for question in ("one", "two", "three"):
            tokens, final = await alice.outcome(await alice.ask(question))
            assert final["data"]["text"] == f"v2 says {question}"
            assert "".join(t["data"]["text"] for t in tokens) == f"v2 says {question}"
    finally:
        await relay.stop()
        server.stop()

    def texts(body: dict[str, Any]) -> list[tuple[str, str]]:
        return [(m["role"], m["content"][0]["text"]) for m in body["messages"]]

    assert texts(bodies[0]) == [("user", "one")]
    assert texts(bodies[1]) == [("user", "one"), ("assistant", "v2 says one"), ("user", "two")]
    # Bounded to the newest three turns, then the new question.
    assert texts(bodies[2]) == [
        ("assistant", "v2 says one"), ("user", "two"), ("assistant", "v2 says two"), ("user", "three")
    ]
    assert all(body["stream"] is True for body in bodies)
