"""Steady load for the cluster's fault tests, and the counts taken after the fault.

- :class:`EventFlow`: events to users and groups, one round at a time, from a publisher
  connected straight to one node (not through HAProxy), which the test moves to another
  node before that one goes: its own failover plays no part in what clients receive.
- :class:`WorkLoad`: exports and runs (and chat asks, if asked for) submitted through
  both edges until stopped, over sockets and the HTTP API, each accepted or refused one
  recorded.
- :class:`ChatLoad`: users asking the Cat over their own sockets until stopped, each
  accepted ask recorded in the order asked; :func:`ask_endings` finds how each ended.
- :func:`audit_work`: every accepted export and run done exactly once, counted in the
  database, the exports directory, the logs and the history stream; every ask ended
  once, in order; nothing dead-lettered; every refused export recorded as failed and
  never built.
- :func:`in_band`: a socket that stayed open through the fault got every event
  published to its keys, those routed while its edge was switching nodes replayed in
  band from the history stream (docs/protocol.md 17.5);
- :func:`recover_missed`: the same events from the stream, by a reconnect with the
  position the client had before the fault (17.3).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractRobustConnection

from shared.config import HistorySettings
from shared.messaging import Address, Envelope
from shared.messaging.broker import BrokerUnavailable, Publisher, connect
from tests.chaos.ledger import Ledger
from tests.chaos.watch import Frame, Watcher, api, until
from tests.support.cat_v1 import reply_for
from tests.support.client import Client
from tests.support.cluster import RabbitCluster
from tests.support.history import (
    SERVICE,
    delivery_problems,
    is_event,
    read_recovery,
    since,
)
from tests.support.inband import gap_problems
from tests.support.inband import in_band as is_in_band
from tests.support.system import System

WINDOW_S = HistorySettings().window_s
RECONNECTED = re.compile(r"^(?P<child>\S+)\s+\|.*broker reconnected after (?P<s>[0-9.]+) s")
SETTLE_S = 180.0
WAIT_S = 30.0
REPLAY_TIMEOUT_S = 60.0
RUN_FINAL = {"completed", "failed", "stopped", "timeout"}
# Every run in flight at once fits the slots, so that none waits out MAX_QUEUE_S.
WORK_SETTINGS = {"WARREN_RUNNER_MAX_CONCURRENT": "8", "WARREN_RUNNER_MAX_PER_USER": "100"}


@dataclass(kw_only=True)
class Background:
    """Work a task of its own does until stopped: :meth:`stop` waits for the task and
    raises what it raised; :meth:`close`, for clean-up, waits without raising."""

    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class EventFlow(Background):
    """Rounds of one event to each address, ``every_s`` apart, until stopped; each event
    numbered per address from 0, as ``tests/support/history.py``'s ``Feed`` does.

    An event the broker does not confirm (a nack: one of the queues it was routed to was
    on a node going away) is published again, the same envelope, until it is confirmed,
    before the next event of its address, as a careful publisher does: it may then
    reach a client twice, which drops it by ``id``.
    """

    cluster: RabbitCluster
    vhost: str
    addresses: Sequence[Address]
    every_s: float
    publisher: Publisher
    connection: AbstractRobustConnection
    node: str
    published: list[Envelope] = field(default_factory=list)
    published_at: dict[str, float] = field(default_factory=dict)
    republished: set[str] = field(default_factory=set)
    _numbers: Counter[str] = field(default_factory=Counter)
    _turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    async def start(
        cls, cluster: RabbitCluster, vhost: str, node: str, addresses: Sequence[Address],
        every_s: float,
    ) -> EventFlow:
        connection = await _publisher_connection(cluster, vhost, node)
        flow = cls(cluster, vhost, addresses, every_s, await Publisher.open(connection),
                   connection, node)
        flow._task = asyncio.create_task(flow._run())
        return flow

    async def _run(self) -> None:
        while not self._stop.is_set():
            async with self._turn:
                for to in self.addresses:
                    await self._publish(to)
            await asyncio.sleep(self.every_s)  # the pace of the traffic, not a wait

    async def _publish(self, to: Address) -> None:
        key = str(to)
        envelope = Envelope(type="test.event", to=to, sender=SERVICE,
                            data={"key": key, "n": self._numbers[key]})
        while True:
            at = time.monotonic()
            try:
                await self.publisher.publish_event(envelope)
                break
            except BrokerUnavailable:
                self.republished.add(envelope.id)
                await asyncio.sleep(self.every_s)  # the pace of the traffic, not a wait
        self._numbers[key] += 1
        self.published.append(envelope)
        self.published_at[envelope.id] = at

    def last(self, key: str) -> Envelope:
        return next(e for e in reversed(self.published) if str(e.to) == key)

    async def move_off(self, node: str) -> None:
        """Publish from another node from the next round on, if on ``node`` now."""
        if self.node != node:
            return
        target = next(n.node for n in self.cluster.live_nodes() if n.node != node)
        connection = await _publisher_connection(self.cluster, self.vhost, target)
        publisher = await Publisher.open(connection)
        async with self._turn:
            old, self.connection, self.node = self.connection, connection, target
            self.publisher = publisher
        await old.close()

    async def close(self) -> None:
        await super().close()
        await self.connection.close()


def outages(system: System, mark: int) -> dict[str, float]:
    """Replica -> the broker outage it logged (``broker reconnected after N s``) since
    ``mark`` (``system.up.mark()``), by name."""
    found = {}
    for line in system.up.output().splitlines()[mark:]:
        if match := RECONNECTED.match(line):
            found[match["child"]] = float(match["s"])
    return dict(sorted(found.items()))


async def _publisher_connection(
    cluster: RabbitCluster, vhost: str, node: str
) -> AbstractRobustConnection:
    return await connect(cluster.node(node).vhost_url(vhost), name="warren-test-publisher")


@dataclass
class WorkLoad(Background):
    """An export and a run submitted each round until stopped, in turn over alice's
    socket, bob's socket (on the other edge) and that edge's HTTP API: alice's export
    and bob's run, then bob's export (HTTP) and alice's run. Each answer is kept:
    accepted ids, refusals. Light on purpose: the builds share two cores with three
    RabbitMQ nodes and every replica, and work must not pile up faster than it is done."""

    system: System
    alice: Watcher
    bob: Watcher
    bob_edge: str
    bob_token: str
    rows: int
    run_steps: int
    chat: bool = False  # alice asks the Cat too, each round
    exports: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    asks: list[tuple[str, str]] = field(default_factory=list)  # (ask id, text), alice's
    refused: list[Any] = field(default_factory=list)
    _rounds: int = 0

    def start(self, every_s: float) -> None:
        """Submit a round every ``every_s`` until :meth:`stop`; again after a stop."""
        self._stop.clear()

        async def rounds() -> None:
            while not self._stop.is_set():
                await self.round()
                await asyncio.sleep(every_s)  # the pace of the load, not a wait

        self._task = asyncio.create_task(rounds())

    async def round(self) -> None:
        export = {"report": "sample", "params": {"rows": self.rows}}
        run = {"job": "countdown", "args": {"start": self.run_steps, "interval_s": 0.25}}
        self._rounds += 1
        if self.chat:
            text = f"alice {self._rounds}"
            await self._ask(self.alice, {"type": "chat.ask", "data": {"text": text}})
        if self._rounds % 2:
            await self._ask(self.alice, {"type": "excel.create", "data": export})
            await self._ask(self.bob, {"type": "run.start", "data": run})
            return
        status, body = await api(self.system.port(self.bob_edge), self.bob_token,
                                 "/api/exports", method="POST", body=export)
        if status == 202:
            self.exports.append(body["task_id"])
        else:
            self.refused.append((status, body))
        await self._ask(self.alice, {"type": "run.start", "data": run})

    async def _ask(self, watcher: Watcher, frame: Frame) -> None:
        answer = await watcher.request(frame)
        if answer["type"] != "ack":
            self.refused.append(answer)
        elif frame["type"] == "chat.ask":
            self.asks.append((answer["data"]["id"], frame["data"]["text"]))
        else:
            (self.exports if frame["type"] == "excel.create" else self.runs).append(
                answer["data"]["id"])

    async def burst(self, exports: int) -> None:
        """``exports`` more at once over alice's socket: with two workers, most wait."""
        for _ in range(exports):
            answer = await self.alice.request({"type": "excel.create", "data": {
                "report": "sample", "params": {"rows": self.rows}}})
            assert answer["type"] == "ack", answer
            self.exports.append(answer["data"]["id"])

    def accepted(self) -> int:
        return len(self.exports) + len(self.runs) + len(self.asks)

    def refusals(self) -> dict[str, int]:
        """How many submissions were refused, by error code (``503 unavailable`` over HTTP)."""
        codes: Counter[str] = Counter()
        for refusal in self.refused:
            if isinstance(refusal, tuple):
                status, body = refusal
                codes[f"{status} {body.get('error') if isinstance(body, dict) else body}"] += 1
            else:
                codes[str(refusal["data"].get("code"))] += 1
        return dict(codes)


CHAT_ENDINGS = frozenset({"chat.reply", "chat.error"})


@dataclass
class ChatLoad(Background):
    """Users asking the Cat over their own sockets until stopped: each user an ask every
    ``every_s`` while fewer than ``depth`` of theirs are unanswered (answers keep up, and
    no backlog outlasts the load), one at a time per user, so that the asks are recorded
    in the order the edge took them. Each text is unique (``"<user> <n>: <question>"``):
    the v1 client tells the end of another ask's answer by its text (docs/cat_relay.md).
    Accepted asks are kept per user as (ask id, text), refused ones as (text, error)."""

    watchers: dict[str, Watcher]
    every_s: float
    depth: int
    question: str = "is anyone there?"
    asks: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    refused: list[tuple[str, Frame]] = field(default_factory=list)
    _numbers: Counter[str] = field(default_factory=Counter)
    _turns: dict[str, asyncio.Lock] = field(default_factory=dict)

    def start(self) -> None:
        """Ask until :meth:`stop`; again after a stop."""
        self._stop.clear()

        async def asking(user: str) -> None:
            while not self._stop.is_set():
                if len(self.unanswered(user)) < self.depth:
                    await self.ask(user)
                await asyncio.sleep(self.every_s)  # the pace of the load, not a wait

        async def everyone() -> None:
            async with asyncio.TaskGroup() as group:
                for user in self.watchers:
                    group.create_task(asking(user))

        self._task = asyncio.create_task(everyone())

    async def ask(self, user: str, text: str | None = None) -> str | None:
        """Ask now (after the user's ask being sent, if any): the ask id, or None if the
        edge refused it. ``text`` defaults to the user's next numbered one."""
        async with self._turns.setdefault(user, asyncio.Lock()):
            if text is None:
                text = f"{user} {self._numbers[user]}: {self.question}"
                self._numbers[user] += 1
            answer = await self.watchers[user].request(
                {"type": "chat.ask", "data": {"text": text}})
            if answer["type"] != "ack":
                self.refused.append((text, answer))
                return None
            ask = str(answer["data"]["id"])
            self.asks.setdefault(user, []).append((ask, text))
            return ask

    def endings(self, user: str) -> list[Frame]:
        """How the user's asks ended on their open socket so far, in arrival order."""
        return ask_endings(self.watchers[user].frames, self.asks.get(user, []))

    def unanswered(self, user: str) -> list[str]:
        """The user's accepted asks not ended on their socket yet, in the order asked."""
        ended = {ending["data"]["ask_id"] for ending in self.endings(user)}
        return [ask for ask, _text in self.asks.get(user, []) if ask not in ended]

    async def all_ended(self, timeout: float) -> None:
        """Wait until each user's last ask has ended on their socket (stop first). Asks
        end in the order asked, so the earlier ones have too, unless one never does:
        :meth:`problems` says."""
        for user, watcher in self.watchers.items():
            if asks := self.asks.get(user):
                last = asks[-1][0]
                try:
                    await watcher.wait_for(lambda f: is_event(f) and f["type"] in CHAT_ENDINGS
                                           and f["data"].get("ask_id") == last, timeout)
                except TimeoutError:
                    raise AssertionError(f"{user}'s last ask did not end within "
                                         f"{timeout:g} s: {last}") from None

    def problems(self, user: str, endings: Sequence[Frame], cat_asks: Sequence[str]) -> list[str]:
        """What is wrong with how the user's asks ended (``endings``, each id once, in the
        order published: live, or read back from the history stream): each ask ended
        once, in the order asked, with its own reply or ``interrupted``; the Cat was asked
        each at most once, in that order (``cat_asks``, the double's record). An ask the
        edge refused may have been queued all the same (``unavailable`` says the broker
        did not confirm it in time): see :meth:`refused_but_asked`."""
        refused = {text for text, _error in self.refused}
        return _chat_problems(self.asks.get(user, []), endings,
                              [text for text in cat_asks if text not in refused])

    def refused_but_asked(self, cat_asks: Sequence[str]) -> list[str]:
        """The texts of refused asks that reached the Cat all the same."""
        return [text for text, _error in self.refused if text in set(cat_asks)]


def ask_endings(frames: Sequence[Frame], asks: Sequence[tuple[str, str]]) -> list[Frame]:
    """The ``chat.reply`` and ``chat.error`` events of ``asks`` among ``frames``, each
    envelope once (an edge that moved replays in band from a window before what it had
    delivered: a client drops the repeats by ``id``), in the order received."""
    wanted = {ask for ask, _text in asks}
    seen: set[str] = set()
    found = []
    for frame in frames:
        if (is_event(frame) and frame["type"] in CHAT_ENDINGS
                and frame["data"].get("ask_id") in wanted and frame["id"] not in seen):
            seen.add(frame["id"])
            found.append(frame)
    return found


def work_done(ledger: Ledger, exports: Sequence[str], runs: Sequence[str]) -> bool:
    """These exports and runs have ended (in the database)."""
    rows = ledger.rows("SELECT id, status FROM runs")
    ended = {row["id"] for row in rows if row["status"] in RUN_FINAL}
    return ledger.all_final(exports) and set(runs) <= ended


async def audit_work(
    cluster: RabbitCluster, vhost: str, system: System, ledger: Ledger, load: WorkLoad,
    alice_token: str, bob_token: str, position: float,
) -> dict[str, Any]:
    """What went wrong with the load's work, by kind; every value empty when nothing did.

    Exactly once, for each accepted export: a ``done`` row, one file, one build, one
    notification (``Ledger.audit_exports``); for each accepted run: ``completed``. And,
    read from the history stream by a socket of each owner opened with ``position``
    (before the first submission), every event about them published once: one
    ``run.started`` and one ``run.finished`` per run, one ``chat.reply`` (or
    ``chat.error`` ``interrupted``) per ask, in the order asked. Each export's
    ``excel.done`` reached its owner once: on the socket open throughout (live, or
    replayed in band), or, if its live publish failed, as a pending notification on a
    new socket.
    Refused exports are ``failed`` rows and were never built. No command waits in a work
    queue, and none was dead-lettered.
    """
    try:
        await until(lambda: work_done(ledger, load.exports, load.runs), SETTLE_S,
                    "every accepted export and run ended")
    except AssertionError as exc:
        exports = ledger.export_status()
        runs = {row["id"]: row["status"] for row in ledger.rows("SELECT id, status FROM runs")}
        open_exports = [(t, exports.get(t)) for t in load.exports
                        if exports.get(t) not in {"done", "failed"}]
        open_runs = [(r, runs.get(r)) for r in load.runs if runs.get(r) not in RUN_FINAL]
        raise AssertionError(f"{exc}: exports {open_exports}, runs {open_runs}") from None
    # Each user's asks end in the order asked: the last one's ending comes last.
    last_ask = load.asks[-1][0] if load.asks else None
    await until(lambda: last_ask is None or any(
        is_event(f) and f["type"] in {"chat.reply", "chat.error"}
        and f["data"].get("ask_id") == last_ask for f in load.alice.frames),
        SETTLE_S, "alice's last ask ended")
    depths = await until(lambda: asyncio.to_thread(_settled, cluster, vhost), SETTLE_S,
                         "work queues empty")
    lines = await ledger.build_log(load.exports, system.up)
    audit = ledger.audit_exports(load.exports, lines)
    runs = {row["id"]: row for row in ledger.rows("SELECT id, status, reason FROM runs")}
    # A completion whose live publish was not confirmed stays pending, for the owner's
    # next socket (docs/exports.md): each owner opens one, on the other edge. That comes
    # before the stream is read below, because the sockets opened for that read get the
    # pending notifications too, after their replay, and would take them first. A publish
    # the broker routed although its confirm was lost (the node stopping under it) is
    # heard live and again from the pending row: the same envelope, which is allowed;
    # two envelopes for one task, or none, are not.
    again = [await Watcher.connect(system.port("edge-2"), alice_token),
             await Watcher.connect(system.port("edge-1"), bob_token)]
    for watcher in again:
        await watcher.sync()
    heard = {task: {frame["id"] for w in (load.alice, load.bob, *again)
                    for frame in w.events("excel.done", task_id=task)}
             for task in load.exports}
    pending = ledger.rows("SELECT id FROM notifications WHERE delivered_at IS NULL")
    for watcher in again:
        await watcher.close()
    # Distinct envelopes: the same one twice in the stream is one event to a client.
    envelopes: dict[tuple[str, str], set[str]] = defaultdict(set)
    endings: list[Frame] = []  # alice's chat replies and errors, in stream order
    for port, token in ((system.port("edge-1"), alice_token), (system.port("edge-2"), bob_token)):
        for frame in await replay_since(port, token, position):
            subject = frame["data"].get("run_id") or frame["data"].get("task_id")
            if frame["type"] in {"run.started", "run.finished"} and subject:
                envelopes[(frame["type"], subject)].add(frame["id"])
            if frame["type"] in {"chat.reply", "chat.error"} and frame["id"] not in {
                    e["id"] for e in endings}:
                endings.append(frame)
    published = Counter({key: len(ids) for key, ids in envelopes.items()})
    refused_tasks = [row for row in ledger.rows("SELECT id, status, error_code FROM export_tasks")
                     if row["id"] not in set(load.exports)]
    refused_builds = ledger.audit_exports([row["id"] for row in refused_tasks], lines).builds
    return {
        "exports not done": audit.lost,
        "exports done twice": audit.duplicated,
        "runs not completed": {run: (runs[run]["status"], runs[run]["reason"])
                               for run in load.runs if runs[run]["status"] != "completed"},
        "run events not published once": {
            (kind, run): published[(kind, run)] for run in load.runs
            for kind in ("run.started", "run.finished") if published[(kind, run)] != 1},
        "completions not heard as one event (live, replayed or pending)": {
            task: sorted(ids) for task, ids in heard.items() if len(ids) != 1},
        "notifications still pending": pending,
        "refused exports not failed": [row for row in refused_tasks if row["status"] != "failed"],
        "refused exports built": dict(refused_builds),
        "commands dead-lettered": {q: n for q, n in depths.items() if n and q.endswith(".dead")},
        "chat asks not ended once, in order": _chat_problems(
            load.asks, endings, system.cat.asks["alice"]),
    }


def _chat_problems(
    asks: Sequence[tuple[str, str]], endings: Sequence[Frame], cat_asks: Sequence[str]
) -> list[str]:
    """Each ask ends once, in the order asked: its reply, or ``interrupted`` (a relay held
    it when its connection broke: docs/cat_relay.md); the Cat was asked each at most
    once, in that order, and every one answered with a reply."""
    problems: list[str] = []
    order = [ending["data"]["ask_id"] for ending in endings]
    if order != [ask for ask, _text in asks]:
        problems.append(f"endings {order} for asks {[ask for ask, _text in asks]}")
    texts = dict(asks)
    for ending in endings:
        text = texts.get(ending["data"]["ask_id"], "")
        if ending["type"] == "chat.reply" and ending["data"]["text"] != reply_for(text):
            problems.append(f"a reply to {text!r} that is not its own: {ending['data']}")
        if ending["type"] == "chat.error" and ending["data"]["code"] != "interrupted":
            problems.append(f"{text!r} failed: {ending['data']}")
    asked = [text for _ask, text in asks]
    if list(cat_asks) != [text for text in asked if text in cat_asks]:
        problems.append(f"the Cat was asked {list(cat_asks)}, for asks {asked}")
    replied = {texts.get(e["data"]["ask_id"], "") for e in endings if e["type"] == "chat.reply"}
    if not replied <= set(cat_asks):
        problems.append(f"replies to asks the Cat never had: {sorted(replied - set(cat_asks))}")
    return problems


def _settled(cluster: RabbitCluster, vhost: str) -> dict[str, int | None] | None:
    """Every queue's depth, once no command waits in (or is being handled from) a work
    queue or the runs queue."""
    depths = cluster.queue_depths(vhost)
    busy = [name for name, n in depths.items() if n != 0 and not name.endswith(".dead")
            and name.startswith(("warren.cmd.", "warren.runner.runs"))]
    return None if busy else depths


async def replay_since(port: int, token: str, position: float) -> list[Frame]:
    """The events a socket opened with ``since=position`` is given from the stream."""
    client = await Client.connect(port, token, query=since(position))
    try:
        recovery = await read_recovery(client, REPLAY_TIMEOUT_S)
    finally:
        client.close()
    assert recovery.recovered is True, recovery.welcome
    return recovery.replayed


@dataclass(frozen=True)
class InBand:
    """What one open socket got: its in-band replays, and what is wrong with it."""

    replays: list[Frame]  # the ``replay.done`` frames that end them
    repeats: int  # events received again, dropped by ``id``
    problems: list[str]

    @property
    def replayed(self) -> int:
        return sum(int(frame["data"]["events"]) for frame in self.replays)


async def all_arrived(watcher: Watcher, flow: EventFlow, keys: set[str]) -> None:
    """Wait until the socket got the last event of each of its keys (``flow`` stopped)."""
    last = {flow.last(key).id for key in keys}
    await until(lambda: last <= {f.get("id") for f in watcher.frames if is_event(f)},
                WAIT_S, "the last event of each key")


def in_band(watcher: Watcher, flow: EventFlow, keys: set[str]) -> InBand:
    """Check every frame one socket received since before ``flow`` began
    (``tests/support/inband.py``'s ``gap_problems``): every event published to ``keys``
    once, in order per key; a repeat only in an in-band replay, and within its window;
    each replay ``recovered``. A second copy of an event its publisher sent again
    (``flow.republished``) is dropped first, as the client drops it by ``id``."""
    frames = _once(watcher.frames, flow.republished)
    replays = [frame for frame in frames if is_in_band(frame)]
    ids = [frame["id"] for frame in frames if is_event(frame)]
    problems = [f"an in-band replay did not recover: {frame['data']}"
                for frame in replays if frame["data"]["recovered"] is not True]
    problems += gap_problems(frames, flow.published, keys, window=WINDOW_S)
    return InBand(replays, len(ids) - len(set(ids)), problems)


def _once(frames: Sequence[Frame], ids: set[str]) -> list[Frame]:
    """``frames`` without the second and later copies of the events ``ids``."""
    seen: set[str] = set()
    kept = []
    for frame in frames:
        if is_event(frame) and frame["id"] in ids:
            if frame["id"] in seen:
                continue
            seen.add(frame["id"])
        kept.append(frame)
    return kept


@dataclass(frozen=True)
class Recovered:
    """What a reconnect with a position got from the stream, and what is wrong with it."""

    replayed: int
    problems: list[str]


async def recover_missed(
    port: int, token: str, before: Sequence[Frame], flow: EventFlow, keys: set[str]
) -> Recovered:
    """Reconnect with the position a client had after ``before`` (its frames up to the
    fault): ``before`` and the replay together must hold every event published to
    ``keys``, once, in order per key (``delivery_problems``), as they do for a client
    that lost its socket at the fault; the stream kept everything through it. ``flow``
    must be stopped: its last event of each key ends the count."""
    position = next(frame["ts"] for frame in reversed(before) if is_event(frame))
    client = await Client.connect(port, token, query=since(position))
    try:
        recovery = await read_recovery(client, REPLAY_TIMEOUT_S)
    finally:
        client.close()
    assert recovery.recovered is True, recovery.welcome
    session = _once([recovery.welcome, *recovery.replayed], flow.republished)
    problems = delivery_problems([_once(before, flow.republished), session], flow.published,
                                 keys, window=WINDOW_S)
    return Recovered(len(recovery.replayed), problems)
