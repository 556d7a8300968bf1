"""The v1 client after a takeover: the Cat sends a user's replies to the user's newest
socket, so a socket opened while another replica's answer is still being written gets
the end of that answer first. Its final frame names the ask it answers (``why.input``);
the client waits for its own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import orjson
from tornado.websocket import websocket_connect

from services.cat_relay.cat import make_client
from services.cat_relay.cat.base import Turn
from services.cat_relay.settings import CatSettings
from tests.support.cat_v1 import CatV1Double, reply_for


async def test_the_end_of_an_earlier_owners_answer_is_not_taken_for_the_next_ask() -> None:
    cat = CatV1Double(pace_s=0.05).start()
    executor = ThreadPoolExecutor(1)
    client = make_client(CatSettings.from_env(
        {"WARREN_CAT_URL": cat.url, "WARREN_CAT_PROTOCOL": "v1"}, development=True), executor)
    try:
        # The replica that owned alice's session: its ask is being answered, slowly.
        earlier = await websocket_connect(f"ws://127.0.0.1:{cat.port}/ws/alice")
        await earlier.write_message(orjson.dumps({"text": "a long earlier question"}).decode())
        assert await earlier.read_message() is not None  # its answer has begun

        # The next owner's socket takes what is left of it, then its own answer.
        async def no_history() -> list[Turn]:
            return []

        # Longer than what is left of the earlier answer, so that ends first.
        mine = "the next question, whose answer takes a good while longer to write"
        reply = await client.ask("alice", mine, no_history, lambda _token: None)
        assert reply == reply_for(mine)
        assert cat.asks["alice"] == ["a long earlier question", mine]
        earlier.close()
    finally:
        await client.close()
        await cat.stop()
        executor.shutdown()
