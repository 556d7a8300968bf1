"""The recovery storm's driver: ``python -m bench.recovery_storm --worker`` (uvloop).

It holds its share of the storm's users, each with what a Warren client keeps across
its sockets (docs/protocol.md 17.2): its position (the ``ts`` of the last event it took,
or the ``position`` of the last ``welcome`` or ``replay.done``), the ids it has seen,
which it drops events by, and, for the bench, every event it took by its publish step
and sequence number, to count losses, duplicates and disorder at the end.

Each socket is a raw :class:`~bench.wsclient.WsClient`; a storm opens the sockets of a
set of users, each at a random moment within the spread, with ``since=<position>``
when asked, and retries what fails as docs/protocol.md 8.1 says (capped exponential
backoff with full jitter; after ``503 overloaded`` or 1013 from a larger base, and never
sooner than ``Retry-After``).

Requests (see :mod:`bench.rpc`):

* ``load {set, clients_file, first, last}``: take users ``first..last-1`` of the file;
* ``storm {set, port, since, spread_s, attempt_s, deadline_s, base_s, overloaded_base_s}``:
  open every socket of the set that is not open; its outcome once all are ready
  (``replay.done``, or ``welcome`` when nothing is to be replayed) or the deadline. From
  then on, a socket of the set that the edge closes or loses is opened again at once, as
  a client would (a *late* reconnect), until ``disarm``;
* ``disarm {set}``: no late reconnects for the set (before its edge is killed);
* ``lost {set, timeout_s}``: wait until the set's sockets are gone (the edge was killed);
* ``late {set}``: the set's sockets dropped after they were ready, and their reconnects;
* ``count {set}``: the set's events received so far, and how many of them in replays;
* ``quiet {stall_s, deadline_s}``: wait until no event has arrived for ``stall_s``;
* ``verify {set, targets, steps}``: losses, duplicates and disorder over the set's users;
* ``close {set, timeout_s}``: close the set's sockets.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from bench.loadclients import close_clients, sparse_histogram
from bench.rpc import run_worker
from bench.servers import raise_file_limit
from bench.storm_driver import failure_reason
from bench.wsclient import Recorder, WsClient, upgrade_request

MAX_BACKOFF_S: Final = 30.0
_RETRY_AFTER: Final = re.compile(r"retry-after:\s*(\d+)", re.IGNORECASE)

Mark = tuple[int, int]  # (publish step, sequence number within the step)


@dataclass(slots=True)
class Counts:
    """Events over all of this driver's users."""

    events: int = 0  # event frames received, repeats included
    replayed: int = 0  # ... of them while a socket was replaying
    last_at: float = 0.0  # monotonic time of the last one


@dataclass(slots=True)
class Subscriber:
    """One user, across its sockets: what a client keeps, and what the bench counts."""

    user: str
    token: str
    keys: frozenset[str]  # the addresses its events come to: user:, group:, broadcast
    position: float | None = None
    seen: set[str] = field(default_factory=set)  # envelope ids taken
    marks: dict[Mark, str] = field(default_factory=dict)  # (step, seq) -> envelope id
    last: dict[str, Mark] = field(default_factory=dict)  # per address, the latest mark
    repeats: int = 0  # events dropped because their id was seen (the window's overlap)
    duplicates: int = 0  # the same (step, seq) again under another id
    disorder: int = 0  # taken after a later event of the same address
    socket: RecoveryClient | None = None
    outcome: str = ""  # of its latest welcome: plain, recovered or the reason
    log: list[str] = field(default_factory=list)  # what happened to its sockets, in short

    def note(self, what: str) -> None:
        if len(self.log) < 60:
            self.log.append(f"{time.monotonic():.1f} {what}")

    def take(self, envelope: dict[str, Any]) -> None:
        event_id = envelope["id"]
        if event_id in self.seen:
            self.repeats += 1
            return
        self.seen.add(event_id)
        self.position = float(envelope["ts"])
        data = envelope.get("data")
        if not isinstance(data, dict) or "step" not in data:
            return
        mark = (int(data["step"]), int(data["seq"]))
        if mark in self.marks:
            self.duplicates += 1
            return
        self.marks[mark] = event_id
        key = str(envelope["to"])
        latest = self.last.get(key)
        if latest is not None and mark < latest:
            self.disorder += 1
        else:
            self.last[key] = mark


class RecoveryClient(WsClient):
    """One socket of a :class:`Subscriber`. Ready on ``replay.done`` when the edge
    recovers it, else on ``welcome``."""

    def __init__(self, request: bytes, subscriber: Subscriber, counts: Counts,
                 recorder: Recorder, closes: Counter[int]) -> None:
        """``counts``: of the set the subscriber belongs to."""
        super().__init__(request, recorder, closes)
        self.subscriber = subscriber
        self.counts = counts
        self.replaying = False
        self.replay_events = 0  # as its replay.done counts them
        self.welcomed_at = 0.0  # monotonic
        self.on_drop: Callable[[RecoveryClient, int], None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.open
        super().connection_lost(exc)
        if was_open:
            self._dropped(-1)

    def _on_close_frame(self, payload: bytes) -> None:
        was_open = self.open
        super()._on_close_frame(payload)
        if was_open:
            self._dropped(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005)

    def _dropped(self, code: int) -> None:
        self.subscriber.note(f"dropped {code}")
        if self.on_drop is not None:
            self.on_drop(self, code)

    def on_text(self, payload: bytes, now: float) -> None:
        frame = orjson.loads(payload)
        if "v" in frame:  # an event (docs/protocol.md 6.1)
            counts = self.counts
            counts.events += 1
            counts.last_at = time.monotonic()
            if self.replaying:
                counts.replayed += 1
            self.subscriber.take(frame)
            return
        kind, data = frame.get("type"), frame.get("data") or {}
        subscriber = self.subscriber
        if kind == "welcome":
            self.welcomed_at = time.monotonic()
            recovered = data.get("recovered")
            if recovered is True:
                subscriber.outcome = "recovered"
                subscriber.note("welcome recovered")
                self.replaying = True
                return
            subscriber.outcome = "plain" if recovered is None else str(data.get("reason"))
            subscriber.position = float(data.get("position", subscriber.position or 0.0))
            subscriber.note(f"welcome {subscriber.outcome} position {subscriber.position:.3f}")
            self._ready()
        elif kind == "replay.done":
            self.replaying = False
            self.replay_events = int(data["events"])
            subscriber.position = float(data["position"])
            subscriber.note(f"replay.done {self.replay_events} position {subscriber.position:.3f}")
            self._ready()


@dataclass(slots=True)
class StormTally:
    """What one storm did, over this driver's share of a set."""

    attempts: int = 0
    ready: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # by reason, retried
    outcomes: Counter[str] = field(default_factory=Counter)
    times: array[float] = field(default_factory=lambda: array("d"))  # first try -> ready
    replays: array[float] = field(default_factory=lambda: array("d"))  # welcome -> ready
    last_welcome: float = 0.0  # since the storm started
    last_ready: float = 0.0
    replay_events: int = 0

    def report(self, unfinished: int) -> dict[str, Any]:
        return {
            "attempts": self.attempts, "ready": self.ready, "unfinished": unfinished,
            "failures": dict(self.failures), "outcomes": dict(self.outcomes),
            "times": sparse_histogram(self.times), "replays": sparse_histogram(self.replays),
            "last_welcome": self.last_welcome, "last_ready": self.last_ready,
            "replay_events": self.replay_events,
        }


def backoff_s(failures: int, base_s: float) -> float:
    """Full jitter over a capped exponential (docs/protocol.md 8.1)."""
    return random.uniform(0.0, min(MAX_BACKOFF_S, base_s * 2 ** (failures - 1)))


def retry_after_s(exc: BaseException) -> float:
    """``Retry-After`` of a refused upgrade (its head is in the error's text), else 0."""
    found = _RETRY_AFTER.search(str(exc).replace("\\r\\n", "\n"))
    return float(found.group(1)) if found else 0.0


def overloaded(reason: str) -> bool:
    return reason in {"HTTP 503", "closed 1013 before welcome"}


class RecoveryDriver:
    """The request handlers of one driver process."""

    def __init__(self) -> None:
        self._sets: dict[str, list[Subscriber]] = {}
        self._counts: dict[str, Counts] = {}
        self._recorder = Recorder()  # WsClient wants one; events go to the subscribers
        self._closes: Counter[int] = Counter()
        self._armed: dict[str, dict[str, Any]] = {}  # set -> the storm request late reconnects use
        self._drops: dict[str, Counter[str]] = {}  # set -> close codes of ready sockets
        self._late: dict[str, StormTally] = {}
        self._late_tasks: set[asyncio.Task[None]] = set()

    async def load(self, request: dict[str, Any]) -> dict[str, Any]:
        entries = orjson.loads(Path(request["clients_file"]).read_bytes())
        chosen = entries[int(request["first"]) : int(request["last"])]
        self._counts[str(request["set"])] = Counts()
        self._drops[str(request["set"])] = Counter()
        self._late[str(request["set"])] = StormTally()
        self._sets[str(request["set"])] = [
            Subscriber(e["user"], e["token"],
                       frozenset((f"user:{e['user']}", *(f"group:{g}" for g in e["groups"]),
                                  "broadcast")))
            for e in chosen
        ]
        return {"users": len(chosen)}

    async def storm(self, request: dict[str, Any]) -> dict[str, Any]:
        """Open every socket of the set that is not open; wait (bounded) until each is ready."""
        name = str(request["set"])
        subscribers = [s for s in self._sets[name] if s.socket is None or not s.socket.open]
        self._armed[name] = request
        tally = StormTally()
        started = time.monotonic()
        deadline = started + float(request["deadline_s"])
        tasks = [asyncio.create_task(
                     self._open(s, self._counts[name], request, started, deadline, tally))
                 for s in subscribers]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()) + 5.0)
        unfinished = sum(1 for t in tasks if not t.done())
        for task in tasks:
            task.cancel()
        return tally.report(unfinished)

    async def _open(self, subscriber: Subscriber, counts: Counts, request: dict[str, Any],
                    started: float, deadline: float, tally: StormTally) -> None:
        """One user's reconnect, retried until it is ready or the deadline passes."""
        port = int(request["port"])
        attempt_s = float(request["attempt_s"])
        begun = started + random.uniform(0.0, float(request["spread_s"]))
        await asyncio.sleep(max(0.0, begun - time.monotonic()))  # the user's moment
        failures = 0
        loop = asyncio.get_running_loop()
        while time.monotonic() < deadline:
            target = f"/ws?token={subscriber.token}"
            if request["since"] and subscriber.position is not None:
                target += f"&since={subscriber.position:.6f}"
            client = RecoveryClient(upgrade_request("127.0.0.1", port, target), subscriber,
                                    counts, self._recorder, self._closes)
            client.on_drop = self._on_drop
            subscriber.note(f"connect to {port}" + (" since" if "since=" in target else ""))
            tally.attempts += 1
            try:
                async with asyncio.timeout(min(attempt_s, max(0.1, deadline - time.monotonic()))):
                    await loop.create_connection(lambda: client, "127.0.0.1", port)
                    await client.ready
            except (OSError, TimeoutError) as exc:
                client.reset()
                reason = failure_reason(exc)
                subscriber.note(reason)
                tally.failures[reason] += 1
                failures += 1
                base = float(request["overloaded_base_s" if overloaded(reason) else "base_s"])
                await asyncio.sleep(max(retry_after_s(exc), backoff_s(failures, base)))
                continue
            except BaseException:
                client.reset()
                raise
            subscriber.socket = client
            now = time.monotonic()
            tally.ready += 1
            tally.replay_events += client.replay_events
            tally.outcomes[subscriber.outcome] += 1
            tally.times.append(now - begun)
            tally.replays.append(now - client.welcomed_at)
            tally.last_welcome = max(tally.last_welcome, client.welcomed_at - started)
            tally.last_ready = max(tally.last_ready, now - started)
            return

    def _on_drop(self, client: RecoveryClient, code: int) -> None:
        """A ready socket closed or lost: open it again, if its set is armed."""
        name = next(n for n, subs in self._sets.items() if client.subscriber in subs)
        request = self._armed.get(name)
        if request is None or client.subscriber.socket is not client:
            return  # the bench closed it, or is killing its edge
        self._drops[name][str(code)] += 1
        now = time.monotonic()
        task = asyncio.create_task(self._open(
            client.subscriber, self._counts[name], {**request, "spread_s": 0.0}, now,
            now + float(request["deadline_s"]), self._late[name]))
        self._late_tasks.add(task)
        task.add_done_callback(self._late_tasks.discard)

    async def disarm(self, request: dict[str, Any]) -> dict[str, Any]:
        self._armed.pop(str(request["set"]), None)
        return {}

    async def late(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request["set"])
        return {"drops": dict(self._drops[name]),
                **self._late[name].report(len(self._late_tasks))}

    async def lost(self, request: dict[str, Any]) -> dict[str, Any]:
        """Wait (bounded) until every socket of the set has lost its connection."""
        sockets = [s.socket for s in self._sets[str(request["set"])] if s.socket is not None]
        pending = [c.lost for c in sockets if not c.lost.done()]
        if pending:
            await asyncio.wait(pending, timeout=float(request["timeout_s"]))
        return {"lost": sum(1 for c in sockets if c.lost.done()),
                "open": sum(1 for c in sockets if not c.lost.done())}

    async def count(self, request: dict[str, Any]) -> dict[str, Any]:
        counts = self._counts[str(request["set"])]
        return {"events": counts.events, "replayed": counts.replayed}

    async def quiet(self, request: dict[str, Any]) -> dict[str, Any]:
        """Wait until no event has come for ``stall_s``, or ``deadline_s`` has passed."""
        stall_s = float(request["stall_s"])
        deadline = time.monotonic() + float(request["deadline_s"])
        if self._late_tasks:
            await asyncio.wait(self._late_tasks, timeout=max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            idle = time.monotonic() - max(c.last_at for c in self._counts.values())
            if idle >= stall_s:
                return {"quiet": True}
            await asyncio.sleep(min(stall_s - idle, deadline - time.monotonic()))
        return {"quiet": False}

    async def verify(self, request: dict[str, Any]) -> dict[str, Any]:
        """Against what was published (each step: its kind, how many were sent, to the
        targets of that kind round robin): every user of the set's events lost, duplicated (the
        same event under another id), out of order, addressed to someone else, and the
        repeats its de-duplication dropped."""
        targets: dict[str, list[str]] = request["targets"]
        index = {kind: {t: i for i, t in enumerate(names)} for kind, names in targets.items()}
        steps = [Step(int(s["step"]), str(s["kind"]), int(s["sent"]), int(s.get("offset", 0)))
                 for s in request["steps"]]
        totals: Counter[str] = Counter()
        example: dict[str, Any] = {}
        for subscriber in self._sets[str(request["set"])]:
            expected = set(expected_marks(subscriber, steps, targets, index))
            taken = set(subscriber.marks)
            if expected - taken and not example:
                missing = sorted(expected - taken)
                example = {"user": subscriber.user, "lost": missing[:12], "count": len(missing),
                           "open": bool(subscriber.socket and subscriber.socket.open),
                           "log": subscriber.log[-20:]}
            totals["users"] += 1
            totals["expected"] += len(expected)
            totals["received"] += len(taken & expected)
            totals["lost"] += len(expected - taken)
            totals["foreign"] += len(taken - expected)
            totals["duplicates"] += subscriber.duplicates
            totals["disorder"] += subscriber.disorder
            totals["repeats"] += subscriber.repeats
            totals["users_with_loss"] += bool(expected - taken)
        return {**totals, "example": example}

    async def close(self, request: dict[str, Any]) -> dict[str, Any]:
        subscribers = self._sets.get(str(request["set"]), [])
        sockets = [s.socket for s in subscribers if s.socket is not None]
        for subscriber in subscribers:
            subscriber.socket = None
        return await close_clients(sockets, float(request["timeout_s"]))


class Step(NamedTuple):
    """One publish step: ``sent`` events of one kind, round robin over that kind's
    targets from the ``offset``-th on."""

    number: int
    kind: str
    sent: int
    offset: int


def expected_marks(subscriber: Subscriber, steps: Iterable[Step],
                   targets: dict[str, list[str]], index: dict[str, dict[str, int]]
                   ) -> Iterable[Mark]:
    """The (step, seq) of every event published to one of ``subscriber``'s addresses."""
    for step in steps:
        if step.kind == "broadcast":
            yield from ((step.number, seq) for seq in range(step.sent))
            continue
        count = len(targets[step.kind])
        prefix = "user:" if step.kind == "direct" else "group:"
        for key in subscriber.keys:
            j = index[step.kind].get(key[len(prefix):]) if key.startswith(prefix) else None
            if j is not None:
                first = (j - step.offset) % count
                yield from ((step.number, seq) for seq in range(first, step.sent, count))


def worker_main(lifetime_s: float) -> None:
    """Serve the storm's requests until stdin closes or ``lifetime_s`` passes."""
    raise_file_limit()
    driver = RecoveryDriver()
    run_worker({
        "load": driver.load, "storm": driver.storm, "lost": driver.lost,
        "count": driver.count, "quiet": driver.quiet, "verify": driver.verify,
        "close": driver.close, "disarm": driver.disarm, "late": driver.late,
    }, lifetime_s)
