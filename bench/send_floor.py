"""The floor under a broadcast: one frame written to N loopback sockets, and nothing else.

    python -m bench.send_floor [--sockets 1000] [--sweeps 200] [--markdown]

A reader process (uvloop, like the fan-out bench's driver) accepts ``--sockets``
connections on 127.0.0.1 and drains them. This process writes one 234-byte WebSocket
text frame to every socket with a bare non-blocking ``send()``, ``--sweeps`` times, 20 ms
apart (the pace of 50 broadcasts a second), and times each sweep: from the first
``send()`` to the return of the last. That is what the edge's fan-out of one broadcast
costs at least, before any of its own work; the last socket of a broadcast gets its frame
no earlier than a sweep after the first. The same sweeps are also made from two threads
(``send()`` releases the GIL), each writing to half of the sockets.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from bench.report import format_table

FRAME: Final = b"\x81\x7e\x00\xe6" + b"x" * 230  # a 230-byte text frame, as the fan-out's
PACE_S: Final = 0.02
READER: Final = """
import asyncio, uvloop
class Drain(asyncio.Protocol):
    def data_received(self, data): pass
async def main():
    server = await asyncio.get_running_loop().create_server(Drain, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
uvloop.run(main())
"""


def connect(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def sweep(sockets: Sequence[socket.socket]) -> None:
    for sock in sockets:
        sock.send(FRAME)


def timed(make_sweep: Callable[[], None], sweeps: int) -> list[float]:
    """Milliseconds per sweep, sorted."""
    times = []
    for _ in range(sweeps):
        started = time.perf_counter()
        make_sweep()
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(PACE_S)
    return sorted(times)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--sweeps", type=int, default=200)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    reader = subprocess.Popen([sys.executable, "-c", READER], stdout=subprocess.PIPE, text=True)
    helper = ThreadPoolExecutor(1)
    sockets: list[socket.socket] = []
    try:
        assert reader.stdout is not None
        sockets = connect(int(reader.stdout.readline()), args.sockets)
        half = len(sockets) // 2

        def one_thread() -> None:
            sweep(sockets)

        def two_threads() -> None:
            other = helper.submit(sweep, sockets[half:])
            sweep(sockets[:half])
            other.result()

        rows = []
        for name, how in (("1 thread", one_thread), ("2 threads", two_threads)) * 2:
            times = timed(how, args.sweeps)
            p50, p99 = (times[min(len(times) - 1, int(q * len(times)))] for q in (0.5, 0.99))
            rows.append([name, f"{len(sockets)}", f"{p50:.2f}", f"{p99:.2f}",
                         f"{1000 * p50 / len(sockets):.1f}"])
        print(format_table(["writer", "sockets", "sweep p50 ms", "sweep p99 ms",
                            "µs per send (p50)"], rows, args.markdown))
    finally:
        for sock in sockets:
            sock.close()
        helper.shutdown()
        reader.kill()
        reader.wait(10)


if __name__ == "__main__":
    main()
