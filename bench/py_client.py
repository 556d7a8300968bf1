"""How many events a second the Python client (warren.client) takes in on one core.

    python -m bench.py_client [--events 300000] [--rounds 3] [--uvloop] [--markdown]

A blaster process accepts a WebSocket on 127.0.0.1, answers its upgrade, sends a
``welcome`` and then ``--events`` event frames built before the round (distinct ids, so
none is dropped as a duplicate), written in 256 KiB chunks as fast as the socket takes
them, and a last ``bench.done`` event. Its cost per frame is a copy, so the reader is what
is measured. Each round reads the frames twice, alternating:

- ``websockets recv``: a bare ``websockets`` connection that receives each message and
  does nothing with it: the floor under any client on that library;
- ``warren.client``: a :class:`warren.client.Client` whose application iterates the
  events (``async for event in client.events()``): parsing, validation, de-duplication
  by id and delivery included.

For each it prints the wall rate (events / seconds from the first event to the last), the
CPU this process used for them (``time.process_time``: one thread, so one core at most)
and the rate per CPU second, with the load average, since the blaster and other work on
the machine share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Final

import orjson
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from bench.report import format_table
from warren.client import Client

CHUNK: Final = 256 << 10
DONE: Final = "bench.done"


def text_frame(payload: bytes) -> bytes:
    """A server's (unmasked) WebSocket text frame."""
    size = len(payload)
    if size < 126:
        header = bytes([0x81, size])
    elif size < 1 << 16:
        header = bytes([0x81, 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x81, 127]) + size.to_bytes(8, "big")
    return header + payload


def event_frames(count: int) -> bytes:
    now = time.time()
    frames = []
    for seq in range(count + 1):
        kind = DONE if seq == count else "chat.token"
        frames.append(text_frame(orjson.dumps({
            "v": 1, "id": f"{seq:032x}", "type": kind, "ts": now, "to": "user:bench",
            "from": "service:bench", "data": {"ask_id": "9c1e0d5b8f7a4e2c9b3d6a1f0e8c7b5a",
                                              "seq": seq, "text": "token "},
        })))
    return b"".join(frames)


async def blast(events: int) -> None:
    welcome = text_frame(orjson.dumps({"type": "welcome", "data": {
        "user": "bench", "groups": [], "roles": [], "edge": "blaster"}}))
    body = event_frames(events)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            data = await reader.read(65536)
            if not data:
                writer.close()
                return
            ws.receive_data(data)
            requests = [event for event in ws.events() if isinstance(event, Request)]
            if requests:
                offered = requests[0].subprotocols
                chosen = "warren.v1" if "warren.v1" in offered else None
                writer.write(ws.send(AcceptConnection(subprotocol=chosen)))
                break
        writer.write(welcome)
        for start in range(0, len(body), CHUNK):
            writer.write(body[start:start + CHUNK])
            await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def read_bare(url: str, events: int) -> tuple[float, float]:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_queue=256, subprotocols=None) as ws:
        await ws.recv()  # welcome
        await ws.recv()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(events):
            await ws.recv()
        return time.perf_counter() - wall, time.process_time() - cpu


async def read_client(url: str, events: int) -> tuple[float, float]:
    client = Client(url, token="bench")
    stream = client.events()
    await client.connect()
    try:
        await anext(stream)
        wall, cpu = time.perf_counter(), time.process_time()
        async for event in stream:
            if event.type == DONE:
                break
        elapsed = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await client.close()
    if client.stats.events != events + 1 or client.stats.garbage_frames:
        raise SystemExit(f"the client got {client.stats} of {events + 1} events")
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run the reader on uvloop")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--blast", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.blast is not None:
        asyncio.run(blast(args.blast))
        return

    blaster = subprocess.Popen([sys.executable, "-m", "bench.py_client", "--blast",
                                str(args.events)], stdout=subprocess.PIPE, text=True)
    try:
        assert blaster.stdout is not None
        url = f"ws://127.0.0.1:{int(blaster.stdout.readline())}/ws"
        run = asyncio.run
        if args.uvloop:
            import uvloop

            run = uvloop.run
        rows = []
        for round_ in range(1, args.rounds + 1):
            for name, reader in (("websockets recv", read_bare), ("warren.client", read_client)):
                load = os.getloadavg()[0]
                wall, cpu = run(reader(url, args.events))
                rows.append([name, str(round_), f"{args.events / wall:,.0f}",
                             f"{100 * cpu / wall:.0f}", f"{args.events / cpu:,.0f}",
                             f"{1e6 * cpu / args.events:.1f}", f"{load:.2f}"])
        print(format_table(["reader", "round", "events/s", "CPU %", "events per CPU s",
                            "µs CPU per event", "load 1 min"], rows, args.markdown))
    finally:
        blaster.kill()
        blaster.wait(10)


if __name__ == "__main__":
    main()
