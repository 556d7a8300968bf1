"""``python -m bench.driver``: a worker that holds many WebSocket clients and counts events.

Requests (see :mod:`bench.rpc`):

* ``connect {dialect, port, clients_file, first, last, concurrency, timeout_s}``: open
  clients ``first..last-1`` of the file; ``dialect`` is ``warren`` or ``engineio``.
* ``collect {step, expected, deadline_s, stall_s}``: deliveries of one step, with a
  latency histogram, once all are in or they stop coming.
* ``status``: open clients and close codes seen.
* ``disconnect {timeout_s}``: close every client.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from bench.loadclients import close_clients, open_client
from bench.rpc import run_worker
from bench.servers import raise_file_limit
from bench.wsclient import EngineIOClient, Recorder, WarrenClient, WsClient

DIALECTS: dict[str, type[WarrenClient | EngineIOClient]] = {
    "warren": WarrenClient,
    "engineio": EngineIOClient,
}


class Driver:
    def __init__(self) -> None:
        self._recorder = Recorder()
        self._closes: Counter[int] = Counter()
        self._clients: list[WsClient] = []

    async def connect(self, request: dict[str, Any]) -> dict[str, Any]:
        dialect = DIALECTS[request["dialect"]]
        port = int(request["port"])
        entries = orjson.loads(Path(request["clients_file"]).read_bytes())
        chosen = entries[int(request["first"]) : int(request["last"])]
        timeout_s = float(request["timeout_s"])
        gate = asyncio.Semaphore(int(request["concurrency"]))
        started = time.perf_counter()

        async def open_one(token: str) -> WsClient:
            async with gate:
                client = dialect.make(port, token, self._recorder, self._closes)
                return await open_client(client, port, timeout_s)

        results = await asyncio.gather(
            *(open_one(entry["token"]) for entry in chosen), return_exceptions=True
        )
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        self._clients.extend(r for r in results if isinstance(r, WsClient))
        return {
            "connected": len(chosen) - len(errors),
            "failed": len(errors),
            "errors": errors[:3],
            "seconds": time.perf_counter() - started,
        }

    async def collect(self, request: dict[str, Any]) -> dict[str, Any]:
        tally = await self._recorder.collect(
            int(request["step"]),
            int(request["expected"]),
            float(request["deadline_s"]),
            float(request["stall_s"]),
        )
        return {
            "received": tally.count,
            "first": tally.first,
            "last": tally.last,
            "histogram": tally.histogram().to_sparse(),
        }

    async def status(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {
            "open": sum(1 for c in self._clients if c.open),
            "closes": {str(code): n for code, n in self._closes.items()},
            "late": self._recorder.late,
            "foreign": self._recorder.foreign,
        }

    async def disconnect(self, request: dict[str, Any]) -> dict[str, Any]:
        """Close every client and wait (bounded) until their connections are gone."""
        clients, self._clients = self._clients, []
        return await close_clients(clients, float(request["timeout_s"]))


def main() -> None:
    parser = argparse.ArgumentParser(description="bench client driver (a bench.fanout worker)")
    parser.add_argument("--lifetime", type=float, default=1200.0, help="exit after this many s")
    args = parser.parse_args()
    raise_file_limit()
    driver = Driver()
    run_worker(
        {
            "connect": driver.connect,
            "collect": driver.collect,
            "status": driver.status,
            "disconnect": driver.disconnect,
        },
        args.lifetime,
    )


if __name__ == "__main__":
    main()
