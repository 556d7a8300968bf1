"""The history reads bench's driver: ``python -m bench.history_reads --worker`` (uvloop).

It holds its share of the reading clients and sends their ``history`` frames
(docs/protocol.md 17.4) on a fixed schedule (open loop: a slow edge does not slow the
offered rate), each client asking in turn for its user's key, its group's and
``broadcast``, and times each answer. A connection may have one ``history`` being read
at a time, so each request goes to the next client that is not waiting for an answer;
when every client is waiting, the request is not sent (counted as ``skipped``).

Requests (see :mod:`bench.rpc`):

* ``connect {port, clients_file, first, last, timeout_s}``: open clients ``first..last-1``
  (those of them not open: again after the edge closed them);
* ``run {rate, duration_s, since_s, limit, timeout_s}``: ``rate * duration_s`` requests,
  with ``since`` = now - ``since_s`` (none when ``since_s`` is null), waiting at most
  ``timeout_s`` after the last one for the answers;
* ``disconnect {timeout_s}``: close every client.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from bench.loadclients import close_clients, open_client, sparse_histogram
from bench.rpc import run_worker
from bench.servers import raise_file_limit
from bench.wsclient import OP_TEXT, Recorder, WsClient, upgrade_request

TICK_S: Final = 0.002  # the pacing tick


@dataclass(slots=True)
class Tally:
    """One run's answers."""

    sent: int = 0
    skipped: int = 0  # due while every client was waiting for an answer
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    lags: array[float] = field(default_factory=lambda: array("d"))  # send - schedule
    events: int = 0  # events in the answers
    full: int = 0  # answers that held ``limit`` events
    truncated_by_retention: int = 0  # answers whose ``oldest`` is later than their since
    bytes: int = 0


class ReaderClient(WsClient):
    """A client that asks for history: ready on ``welcome``; answers settle its asks."""

    def __init__(self, request: bytes, keys: tuple[str, ...], recorder: Recorder,
                 closes: Counter[int]) -> None:
        super().__init__(request, recorder, closes)
        self.keys = keys
        self._refs = itertools.count(1)
        self._asked: dict[int, tuple[float, float | None, int]] = {}  # ref -> sent, since, limit
        self.tally: Tally | None = None
        self.live = 0  # live events received meanwhile

    def ask(self, key: str, since: float | None, limit: int) -> None:
        ref = next(self._refs)
        data: dict[str, Any] = {"key": key, "limit": limit}
        if since is not None:
            data["since"] = since
        self._asked[ref] = (time.monotonic(), since, limit)
        self.send(OP_TEXT, orjson.dumps({"type": "history", "ref": ref, "data": data}))

    @property
    def waiting(self) -> int:
        return len(self._asked)

    def forget(self) -> None:
        self._asked.clear()

    def on_text(self, payload: bytes, now: float) -> None:
        frame = orjson.loads(payload)
        if "v" in frame:
            self.live += 1
            return
        kind = frame.get("type")
        if kind == "welcome":
            self._ready()
            return
        asked = self._asked.pop(frame.get("ref"), None)
        if asked is None or self.tally is None:
            return
        sent, since, limit = asked
        tally = self.tally
        tally.latencies.append(time.monotonic() - sent)
        if kind == "ack":
            data = frame["data"]
            tally.answered += 1
            tally.events += len(data["events"])
            tally.bytes += len(payload)
            tally.full += len(data["events"]) >= limit
            oldest = data.get("oldest")
            if since is not None and oldest is not None and oldest > since:
                tally.truncated_by_retention += 1
        else:
            tally.errors[str((frame.get("data") or {}).get("code"))] += 1


class ReadsDriver:
    def __init__(self) -> None:
        self._clients: dict[str, ReaderClient] = {}  # by user
        self._recorder = Recorder()
        self._closes: Counter[int] = Counter()

    async def connect(self, request: dict[str, Any]) -> dict[str, Any]:
        port = int(request["port"])
        entries = orjson.loads(Path(request["clients_file"]).read_bytes())
        chosen = entries[int(request["first"]) : int(request["last"])]
        timeout_s = float(request["timeout_s"])
        gate = asyncio.Semaphore(50)

        async def open_one(entry: dict[str, Any]) -> ReaderClient:
            keys = (f"user:{entry['user']}", *(f"group:{g}" for g in entry["groups"]), "broadcast")
            async with gate:
                client = ReaderClient(
                    upgrade_request("127.0.0.1", port, f"/ws?token={entry['token']}"),
                    keys, self._recorder, self._closes)
                return await open_client(client, port, timeout_s)

        todo = [e for e in chosen
                if e["user"] not in self._clients or not self._clients[e["user"]].open]
        results = await asyncio.gather(*(open_one(e) for e in todo), return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        for entry, result in zip(todo, results):
            if isinstance(result, ReaderClient):
                self._clients[entry["user"]] = result
        return {"connected": sum(1 for c in self._clients.values() if c.open),
                "reopened": len(todo) - len(errors), "failed": len(errors), "errors": errors[:3]}

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send the requests on schedule, then wait (bounded) for their answers."""
        rate, duration_s = float(request["rate"]), float(request["duration_s"])
        since_s = request.get("since_s")
        limit = int(request["limit"])
        tally = Tally()
        clients = [c for c in self._clients.values() if c.open]
        closes_before = Counter(self._closes)
        if not clients:
            raise ConnectionError(f"no client is open; close codes seen: {dict(self._closes)}")
        for client in clients:
            client.tally = tally
            client.forget()
        turns = [itertools.cycle(c.keys) for c in clients]
        total = max(1, round(rate * duration_s))
        live_before = sum(c.live for c in clients)
        started = time.monotonic()
        n = 0
        for i in range(total):
            due = started + i / rate
            if due > time.monotonic() + TICK_S:
                await asyncio.sleep(due - time.monotonic())  # pacing: the schedule is the load
            tally.lags.append(time.monotonic() - due)
            free = next((k for k in range(len(clients))
                         if not clients[(n + k) % len(clients)].waiting), None)
            if free is None:
                tally.skipped += 1
                continue
            n = (n + free) % len(clients)
            since = None if since_s is None else time.time() - float(since_s)
            clients[n].ask(next(turns[n]), since, limit)
            tally.sent += 1
            n = (n + 1) % len(clients)
        deadline = time.monotonic() + float(request["timeout_s"])
        while any(c.waiting for c in clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # waiting for the last answers, bounded by the deadline
        unanswered = sum(c.waiting for c in clients)
        for client in clients:
            client.tally = None
            client.forget()
        return {
            "sent": tally.sent, "skipped": tally.skipped, "answered": tally.answered,
            "errors": dict(tally.errors),
            "unanswered": unanswered, "latency": sparse_histogram(tally.latencies),
            "lag": sparse_histogram(tally.lags), "events": tally.events, "full": tally.full,
            "truncated": tally.truncated_by_retention, "bytes": tally.bytes,
            "live": sum(c.live for c in clients) - live_before,
            "closed": sum(1 for c in clients if not c.open),
            "closes": {str(code): n for code, n in (self._closes - closes_before).items()},
        }

    async def disconnect(self, request: dict[str, Any]) -> dict[str, Any]:
        clients, self._clients = list(self._clients.values()), {}
        return await close_clients(clients, float(request["timeout_s"]))


def worker_main(lifetime_s: float) -> None:
    raise_file_limit()
    driver = ReadsDriver()
    run_worker({"connect": driver.connect, "run": driver.run, "disconnect": driver.disconnect},
               lifetime_s)
