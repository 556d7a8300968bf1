"""The floor under cat_relay: the same broker and Cat hops with nothing else.

    python -m bench.null_relay        (bench/relay.py --floor starts it)

Consumes ``chat.ask`` (prefetch 1024), keeps one Tornado WebSocket per user to the Cat
(a message callback, as the relay does), sends the ask, streams the Cat's tokens as
``chat.token`` batches (the relay's own :class:`TokenStream`, at the relay's default
``WARREN_RELAY_TOKEN_FLUSH_S``: what the relay must publish besides the reply), waits for
the final frame and publishes ``chat.reply`` with ``Publisher.publish_event``. No
sessions, order, timeouts, metrics or errors: what ``bench/relay.py`` measures with it is
what the machine, the broker and the Cat cost on their own, to compare the relay against.
Settings come from the same variables as the relay's.
"""

from __future__ import annotations

import asyncio
import os

import orjson
import tornado.web
import uvloop
from aio_pika.abc import AbstractIncomingMessage
from tornado.websocket import WebSocketClientConnection, websocket_connect

from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher, connect
from shared.messaging.names import Command, Event
from shared.messaging.work import WorkConsumer
from shared.service import HttpSettings, listen, tune_garbage_collector
from services.cat_relay.tokens import TokenStream

SERVICE = Address.service("cat_relay")


class NoMetrics(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("")


TOKEN_FLUSH_S = float(os.environ.get("WARREN_RELAY_TOKEN_FLUSH_S", "0.05"))  # the relay's


class CatSocket:
    def __init__(self) -> None:
        self.connection: WebSocketClientConnection | None = None
        self.answer: asyncio.Future[str] | None = None
        self.tokens: TokenStream | None = None

    def on_message(self, raw: str | bytes | None) -> None:
        if raw is None or self.answer is None:
            return
        frame = orjson.loads(raw)
        if frame.get("type") == "chat_token" and self.tokens is not None:
            self.tokens.add(frame["content"])
        elif frame.get("type") == "chat" and not self.answer.done():
            self.answer.set_result(frame["text"])


async def main() -> None:
    env = os.environ
    connection = await connect(env["WARREN_AMQP_URL"], name="bench-null-relay")
    publisher = await Publisher.open(connection)
    cat = env["WARREN_CAT_URL"].replace("http", "ws", 1)
    sockets: dict[str, CatSocket] = {}

    async def answer(envelope: Envelope, _message: AbstractIncomingMessage) -> None:
        user = envelope.sender.name
        socket = sockets.get(user)
        if socket is None:
            socket = sockets[user] = CatSocket()
            socket.connection = await websocket_connect(
                f"{cat}/ws/{user}", on_message_callback=socket.on_message
            )
            socket.connection.stream.set_nodelay(True)
        assert socket.connection is not None

        async def send_tokens(seq: int, batch: str) -> None:
            data = {"ask_id": envelope.id, "seq": seq, "text": batch}
            await publisher.publish_event(Envelope(type=Event.CHAT_TOKEN, to=envelope.to, sender=SERVICE, data=data))

        socket.answer = asyncio.get_running_loop().create_future()
        socket.tokens = TokenStream(send_tokens, interval_s=TOKEN_FLUSH_S, max_chars=2048)
        await socket.connection.write_message(orjson.dumps({"text": envelope.data["text"]}).decode())
        text = await socket.answer
        await socket.tokens.close(flush=False)  # as the relay does: the reply has the whole text
        data = {"ask_id": envelope.id, "text": text}
        await publisher.publish_event(Envelope(type=Event.CHAT_REPLY, to=envelope.to, sender=SERVICE, data=data))

    consumer = WorkConsumer(connection, Command.CHAT_ASK, answer, prefetch=1024)
    await consumer.start()
    settings = HttpSettings("127.0.0.1", int(env["WARREN_RELAY_PORT"]), 1.0)
    _server, port = listen(tornado.web.Application([(r"/metrics", NoMetrics)]), settings)
    tune_garbage_collector()  # as every service does once started
    print(orjson.dumps({"message": "cat_relay ready", "port": port}).decode(), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())  # the relay's loop
