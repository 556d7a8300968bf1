"""The soak's client driver: ``python -m bench.soak --worker`` (uvloop).

It holds its share of the soak's sockets and makes the traffic over them, as users
would: ``message.send`` frames to a user, to the sender's group and (from a client with
the ``admin`` role) to ``broadcast``, paced every tick; and, from the clients that run
jobs, ``run.start`` of the runner's ``lines`` job, started again as soon as the last run
of that client has finished. What arrives is counted by kind, with its latencies, per
sampling window and since the start.

Requests (see :mod:`bench.rpc`):

* ``connect {port, clients_file, first, last, concurrency, timeout_s}``: open clients
  ``first..last-1`` of the file (one retry for those that fail);
* ``start {rates, run_args, run_timeout_s}``: start the traffic;
* ``sample``: the window since the last sample, open sockets and close codes seen;
* ``stop {timeout_s}``: stop the traffic, let the runs in progress finish;
* ``totals {stall_s, deadline_s}``: everything since the start, once nothing more arrives;
* ``disconnect {timeout_s}``: close every client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
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
from bench.wsclient import OP_TEXT, Recorder, WarrenClient

KINDS: Final = ("direct", "group", "broadcast", "run")
TEXT: Final = "soak " + "x" * 95  # a chat line's worth of text in every message
RUN_EVENTS: Final = frozenset({"run.queued", "run.started", "run.finished", "run.error"})
TICK_S: Final = 0.02  # the drivers' pacing tick


class Window:
    """What one driver received in one sampling window, by kind."""

    __slots__ = ("counts", "origin", "published")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(KINDS, 0)
        self.published = {k: array("d") for k in KINDS}  # envelope ts -> receipt
        self.origin = {k: array("d") for k in KINDS}  # send or print -> receipt

    def report(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "published": {k: sparse_histogram(v) for k, v in self.published.items()},
            "origin": {k: sparse_histogram(v) for k, v in self.origin.items()},
        }


@dataclass(slots=True)
class RunStats:
    """The runs of one driver's run loops, since the start."""

    started: int = 0  # run.start frames acked
    finished: Counter[str] = field(default_factory=Counter)  # by status
    refused: Counter[str] = field(default_factory=Counter)  # error / run.error codes
    timeouts: int = 0
    lines_reported: int = 0  # the lines run.finished says a finished run printed
    lines_received: int = 0  # the lines of those runs that arrived


class RunLoop:
    """One client that keeps one run of the ``lines`` job going until told to stop."""

    def __init__(self, client: WarrenClient, user: str, args: dict[str, Any],
                 timeout_s: float, stats: RunStats) -> None:
        self.client = client
        self.user = user
        self._args = args
        self._timeout_s = timeout_s
        self._stats = stats
        self._run_id: str | None = None
        self._lines = 0
        self._done: asyncio.Future[dict[str, Any]] | None = None

    async def run(self, stop: asyncio.Event, refs: itertools.count[int],
                  pending: dict[int, Any]) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set() and self.client.open:
            ref = next(refs)
            self._run_id, self._lines = None, 0
            self._done = loop.create_future()
            pending[ref] = self
            self.client.send(OP_TEXT, orjson.dumps({
                "type": "run.start", "ref": ref, "data": {"job": "lines", "args": self._args},
            }))
            try:
                outcome = await asyncio.wait_for(self._done, self._timeout_s)
            except TimeoutError:
                self._stats.timeouts += 1
                continue
            if "code" in outcome:
                self._stats.refused[outcome["code"]] += 1
                with contextlib.suppress(TimeoutError):  # a refused start: retry after 1 s
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            self._stats.finished[outcome["status"]] += 1
            self._stats.lines_reported += int(outcome["lines"])
            self._stats.lines_received += self._lines

    def acked(self, run_id: str) -> None:
        self._stats.started += 1
        self._run_id = run_id

    def refused(self, code: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result({"code": code})

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """``run.finished`` or ``run.error`` (which names the command) of the current run."""
        mine = self._run_id is not None and self._run_id in (data.get("run_id"),
                                                              data.get("command_id"))
        if not mine or self._done is None or self._done.done():
            return
        if kind == "run.finished":
            self._done.set_result(data)
        elif kind == "run.error":
            self.refused(str(data.get("code")))

    def on_lines(self, run_id: str, count: int) -> None:
        if run_id == self._run_id:
            self._lines += count


class Traffic(Recorder):
    """Every frame every soak client receives after its ``welcome``.

    Events are counted into the current :class:`Window`; ``ack`` and ``error`` settle
    the sends; run events go to the client's :class:`RunLoop`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.window = Window()
        self.received: Counter[str] = Counter()  # by kind, since the start
        self.pending: dict[int, Any] = {}  # ref -> address key, or the RunLoop
        self.acked: Counter[str] = Counter()  # message.send acks by address key
        self.errors: Counter[str] = Counter()  # message.send errors by code
        self.loops: dict[str, RunLoop] = {}  # by user id
        self.run_stats = RunStats()
        self.unknown = 0

    def record(self, envelope: dict[str, Any], now: float) -> None:
        kind = envelope.get("type")
        if kind == "message":
            self._message(envelope, now)
        elif kind == "run.output":
            self._output(envelope, now)
        elif kind == "ack":
            self._settled(envelope, None)
        elif kind == "error":
            self._settled(envelope, str(envelope["data"].get("code")))
        elif kind in RUN_EVENTS:
            loop = self.loops.get(str(envelope.get("to", ""))[5:])
            if loop is not None:
                loop.on_event(kind, envelope["data"])
        else:
            self.unknown += 1

    def _message(self, envelope: dict[str, Any], now: float) -> None:
        to = envelope["to"]
        kind = "direct" if to.startswith("user:") else "group" if to.startswith("group:") else "broadcast"
        window = self.window
        window.counts[kind] += 1
        window.published[kind].append(now - envelope["ts"])
        window.origin[kind].append(now - envelope["data"]["t"])
        self.received[kind] += 1

    def _output(self, envelope: dict[str, Any], now: float) -> None:
        data = envelope["data"]
        lines: list[str] = data["lines"]
        window = self.window
        window.counts["run"] += 1
        window.published["run"].append(now - envelope["ts"])
        origin = window.origin["run"]
        for line in lines:  # "line <i> <unix time of the print>"
            origin.append(now - float(line.rsplit(" ", 1)[1]))
        self.received["run"] += 1
        loop = self.loops.get(envelope["to"][5:])
        if loop is not None:
            loop.on_lines(data["run_id"], len(lines))

    def _settled(self, frame: dict[str, Any], code: str | None) -> None:
        what = self.pending.pop(frame.get("ref"), None)  # type: ignore[arg-type]
        if isinstance(what, RunLoop):
            if code is None:
                what.acked(str(frame["data"]["id"]))
            else:
                what.refused(code)
        elif what is None:
            self.unknown += 1
        elif code is None:
            self.acked[what] += 1
        else:
            self.errors[code] += 1

    def take_window(self) -> Window:
        window, self.window = self.window, Window()
        return window


@dataclass(slots=True)
class Talker:
    """A client with the user and the group it sends as."""

    client: WarrenClient
    user: str
    group: str


class SoakDriver:
    """The request handlers of one driver process, over all the clients it holds."""

    def __init__(self) -> None:
        self._traffic = Traffic()
        self._closes: Counter[int] = Counter()
        self._talkers: list[Talker] = []  # the clients that send messages
        self._admins: list[Talker] = []  # those of them that may broadcast
        self._run_clients: list[Talker] = []  # the clients that start runs
        self._loops: list[RunLoop] = []
        self._users: list[str] = []
        self._refs = itertools.count(1)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sent: Counter[str] = Counter()
        self._unsent = 0  # sends skipped because the sender's socket was no longer open

    async def connect(self, request: dict[str, Any]) -> dict[str, Any]:
        """Open this driver's share of the clients, ``concurrency`` at a time."""
        port = int(request["port"])
        entries = orjson.loads(Path(request["clients_file"]).read_bytes())
        self._users = [e["user"] for e in entries]
        mine = entries[int(request["first"]) : int(request["last"])]
        timeout_s = float(request["timeout_s"])
        gate = asyncio.Semaphore(int(request["concurrency"]))
        started = time.perf_counter()

        async def open_one(entry: dict[str, Any]) -> WarrenClient:
            async with gate:
                client = WarrenClient.make(port, entry["token"], self._traffic, self._closes)
                return await open_client(client, port, timeout_s)

        errors: list[str] = []
        todo = mine
        for _attempt in range(2):  # one retry for what failed the first time
            results = await asyncio.gather(*(open_one(e) for e in todo), return_exceptions=True)
            failed = []
            for entry, result in zip(todo, results):
                if isinstance(result, BaseException):
                    failed.append(entry)
                    errors.append(repr(result))
                else:
                    self._adopt(entry, result)
            todo = failed
            if not todo:
                break
        return {
            "connected": len(mine) - len(todo),
            "failed": len(todo),
            "retried": len(errors) - len(todo) if todo else len(errors),
            "errors": errors[:3],
            "seconds": time.perf_counter() - started,
        }

    def _adopt(self, entry: dict[str, Any], client: WarrenClient) -> None:
        talker = Talker(client, entry["user"], entry["group"])
        if entry["runs"]:
            self._run_clients.append(talker)
            return
        self._talkers.append(talker)
        if entry["admin"]:
            self._admins.append(talker)

    async def start(self, request: dict[str, Any]) -> dict[str, Any]:
        """Start sending at ``rates`` (messages/s of this driver, by kind) and the run loops."""
        rates = {k: float(v) for k, v in request["rates"].items() if float(v) > 0}
        args = dict(request["run_args"])
        timeout_s = float(request["run_timeout_s"])
        self._loops = [
            RunLoop(t.client, t.user, args, timeout_s, self._traffic.run_stats)
            for t in self._run_clients
        ]
        self._traffic.loops = {loop.user: loop for loop in self._loops}
        self._tasks.append(asyncio.create_task(self._pace(rates)))
        self._tasks += [
            asyncio.create_task(loop.run(self._stop, self._refs, self._traffic.pending))
            for loop in self._loops
        ]
        return {"talkers": len(self._talkers), "admins": len(self._admins),
                "run_loops": len(self._loops)}

    async def _pace(self, rates: dict[str, float]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = dict.fromkeys(rates, 0)
        while not self._stop.is_set():
            elapsed = loop.time() - started
            for kind, rate in rates.items():
                due = int(elapsed * rate)
                while sent[kind] < due:
                    self._send(kind)
                    sent[kind] += 1
            with contextlib.suppress(TimeoutError):  # pacing: wake every tick or at stop
                await asyncio.wait_for(self._stop.wait(), TICK_S)

    def _send(self, kind: str) -> None:
        if kind == "broadcast":
            talker, to, key = random.choice(self._admins), "broadcast", "broadcast"
        elif kind == "group":
            talker = random.choice(self._talkers)
            to = key = f"group:{talker.group}"
        else:
            talker, to, key = random.choice(self._talkers), f"user:{random.choice(self._users)}", "direct"
        if not talker.client.open:
            self._unsent += 1
            return
        ref = next(self._refs)
        self._traffic.pending[ref] = key
        self._sent[kind] += 1
        talker.client.send(OP_TEXT, orjson.dumps({
            "type": "message.send", "ref": ref, "to": to,
            "data": {"t": time.time(), "text": TEXT},
        }))

    async def sample(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {**self._traffic.take_window().report(), **self._status()}

    async def stop(self, request: dict[str, Any]) -> dict[str, Any]:
        """Stop sending and starting runs; wait (bounded) for the runs in progress."""
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=float(request["timeout_s"]))
        unfinished = sum(1 for t in self._tasks if not t.done())
        for task in self._tasks:
            task.cancel()
        return {"unfinished": unfinished}

    async def totals(self, request: dict[str, Any]) -> dict[str, Any]:
        """Everything since the start, once deliveries have stopped coming for ``stall_s``
        (or ``deadline_s`` passed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request["deadline_s"])
        stall_s = float(request["stall_s"])
        seen = -1
        while (total := sum(self._traffic.received.values())) != seen and loop.time() < deadline:
            seen = total
            await asyncio.sleep(stall_s)  # look again: still coming, or stopped?
        traffic = self._traffic
        stats = traffic.run_stats
        return {
            "sent": dict(self._sent),
            "unsent": self._unsent,
            "acked": dict(traffic.acked),
            "errors": dict(traffic.errors),
            "unanswered": sum(1 for v in traffic.pending.values() if isinstance(v, str)),
            "received": dict(traffic.received),
            "unknown": traffic.unknown,
            "runs": {
                "started": stats.started, "finished": dict(stats.finished),
                "refused": dict(stats.refused), "timeouts": stats.timeouts,
                "lines_reported": stats.lines_reported, "lines_received": stats.lines_received,
            },
            **self._status(),
        }

    def _status(self) -> dict[str, Any]:
        clients = [t.client for t in (*self._talkers, *self._run_clients)]
        return {
            "open": sum(1 for c in clients if c.open),
            "closes": {str(code): n for code, n in self._closes.items()},
        }

    async def disconnect(self, request: dict[str, Any]) -> dict[str, Any]:
        """Close every client and wait (bounded) until their connections are gone."""
        clients = [t.client for t in (*self._talkers, *self._run_clients)]
        self._talkers, self._admins, self._run_clients = [], [], []
        return await close_clients(clients, float(request["timeout_s"]))


def worker_main(lifetime_s: float) -> None:
    """Serve the soak's requests until stdin closes or ``lifetime_s`` passes."""
    raise_file_limit()
    driver = SoakDriver()
    run_worker(
        {
            "connect": driver.connect,
            "start": driver.start,
            "sample": driver.sample,
            "stop": driver.stop,
            "totals": driver.totals,
            "disconnect": driver.disconnect,
        },
        lifetime_s,
    )
