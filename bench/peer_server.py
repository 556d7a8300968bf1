"""``python -m bench.peer_server``: the peer row, a python-socketio 5 server on aiohttp.

Events reach it through ``socketio.AsyncAioPikaManager`` (RabbitMQ, a fanout
exchange and one queue per server), as Warren's reach the edge through
``warren.events``. A client authenticates with a Warren token in its Socket.IO
``auth`` and joins the rooms ``user.<id>`` and ``group.<name>`` for each of its
groups; broadcast is an emit to the whole namespace. It runs on asyncio's default
loop, like the edge, and logs ``peer ready`` with its port as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from typing import Any

import orjson
import socketio
import uvloop
from aiohttp import web

from shared.auth import AuthSettings, TokenError, TokenService
from shared.messaging import group_key, user_key


def make_server(amqp_url: str, tokens: TokenService) -> socketio.AsyncServer:
    server = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=socketio.AsyncAioPikaManager(amqp_url),
        transports=["websocket"],
        logger=False,
        engineio_logger=False,
    )

    async def connect(sid: str, _environ: dict[str, Any], auth: object) -> bool:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str):
            return False
        try:
            identity = tokens.verify(token)
        except TokenError:
            return False
        await server.enter_room(sid, user_key(identity.user_id))
        for group in identity.groups:
            await server.enter_room(sid, group_key(group))
        return True

    server.on("connect", connect)
    return server


async def serve(amqp_url: str, lifetime_s: float) -> None:
    tokens = TokenService(AuthSettings.from_env({"WARREN_ENV": "development"}, development=True))
    app = web.Application()
    make_server(amqp_url, tokens).attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = sock.getsockname()[1]
    sys.stdout.buffer.write(orjson.dumps({"message": "peer ready", "port": port}) + b"\n")
    sys.stdout.buffer.flush()
    try:
        await asyncio.wait_for(stop.wait(), lifetime_s)
    except TimeoutError:
        pass
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="python-socketio peer server for bench.fanout")
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--lifetime", type=float, default=1200.0, help="exit after this many s")
    args = parser.parse_args()
    uvloop.run(serve(args.amqp_url, args.lifetime))  # the loop Warren's edge runs on


if __name__ == "__main__":
    main()
