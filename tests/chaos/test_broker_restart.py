"""RabbitMQ restarted under load: clients connected, a run streaming, exports queued.

Every service reconnects by itself, the sockets stay open (the edge closes nothing when
the broker goes away: protocol.md 3.3 and 8), every queued export completes exactly
once, the run ends (finished, or failed with a reason), and nothing durable is lost:
the test counts it. The restart is expected, and the logs say so: each replica logs the
loss and the reconnection once, and nothing at ERROR, with no traceback.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tests.chaos.ledger import Ledger
from tests.chaos.watch import Watcher, api, is_event, until
from tests.support.private_broker import PrivateBroker
from tests.support.system import System

EXPORT_ROWS = 300  # about 3 s of building each (WARREN_EXCEL_TEST_ROW_DELAY_S)
SETTLE_S = 90.0
# A child's log line as `warren up` shows it: "edge-1   | 12:00:01 WARNING  message  k=v".
RECORD = re.compile(r"^(?P<child>\S+)\s+\| \d\d:\d\d:\d\d (?P<level>[A-Z]+)\s+(?P<message>.*)$")
LOST = "broker connection lost"
RECONNECTED = "broker reconnected after"


def vhost_of(amqp_url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).path.lstrip("/"))


async def test_a_broker_restart_loses_no_durable_work(
    system: System,
    private_broker: PrivateBroker,
    private_amqp_url: str,
    ledger: Ledger,
    token_for: Callable[..., str],
) -> None:
    edge1, edge2 = system.port("edge-1"), system.port("edge-2")
    alice_token, bob_token = token_for("alice"), token_for("bob")
    alice = await Watcher.connect(edge1, alice_token)
    bob = await Watcher.connect(edge2, bob_token)

    # A run streaming output...
    ack = await alice.request({"type": "run.start", "data": {
        "job": "countdown", "args": {"start": 60, "interval_s": 0.25}}})
    assert ack["type"] == "ack", ack
    run_id = ack["data"]["id"]
    await alice.wait_for(is_event("run.output", run_id=run_id))

    # ...and six exports: four from alice's socket, two over bob's HTTP API. Two workers
    # build one each at a time, so most of them wait in the queue.
    alice_tasks = []
    for _ in range(4):
        ack = await alice.request({"type": "excel.create", "data": {
            "report": "sample", "params": {"rows": EXPORT_ROWS}}})
        assert ack["type"] == "ack", ack
        alice_tasks.append(ack["data"]["id"])
    bob_tasks = []
    for _ in range(2):
        status, body = await api(edge2, bob_token, "/api/exports", method="POST",
                                 body={"report": "sample", "params": {"rows": EXPORT_ROWS}})
        assert status == 202, body
        bob_tasks.append(body["task_id"])
    tasks = alice_tasks + bob_tasks
    await alice.wait_for(is_event("excel.progress", task_id=alice_tasks[0]))
    queued = [task for task, status in ledger.export_status().items() if status == "queued"]
    assert len(queued) >= 3, ledger.export_status()  # the restart finds work in the queue

    # The broker goes away.
    await asyncio.to_thread(private_broker.stop_app)
    await until(lambda: _none_ready(system), 30, "every replica reports not ready")
    # The sockets stay open; what needs the broker is refused clearly, not hung.
    refused = await alice.request({"type": "message.send", "to": "user:bob", "data": {}})
    assert refused["type"] == "error" and refused["data"]["code"] == "unavailable", refused
    refused = await alice.request({"type": "excel.create", "data": {
        "report": "sample", "params": {"rows": 10}}})
    assert refused["type"] == "error" and refused["data"]["code"] == "unavailable", refused
    status, body = await api(edge2, bob_token, "/api/exports", method="POST",
                             body={"report": "sample", "params": {"rows": 10}})
    assert (status, body["error"]) == (503, "unavailable"), body

    # It comes back: every replica of every service consumes again, by itself.
    await asyncio.to_thread(private_broker.start_app)
    await system.wait_ready()

    # The sockets stayed open and carry traffic again, both ways, across edges.
    assert not alice.closed and not bob.closed, (alice.close_code, bob.close_code)
    sent = await bob.request({"type": "message.send", "to": "user:alice", "data": {"n": 1}})
    assert sent["type"] == "ack", sent
    await alice.wait_for(lambda f: f.get("id") == sent["data"]["id"])

    # The run ends one way or the other, never left running.
    run = await until(
        lambda: (r := ledger.run(run_id)) and r["status"] not in {"queued", "running"} and r,
        SETTLE_S, f"run {run_id} ended",
    )
    assert run["status"] == "completed" or (run["status"] == "failed" and run["reason"]), run
    # Run output is at most once (lines published while the broker was away are dropped),
    # but never doubled: each batch arrived at most once, in order.
    seqs = [frame["data"]["seq"] for frame in alice.events("run.output", run_id=run_id)]
    assert seqs == sorted(set(seqs)), seqs

    # Every export is final; then each owner hears of each one: live, or (if it was
    # published while the broker was away) as a pending notification on the next socket.
    await until(lambda: ledger.all_final(tasks), SETTLE_S, "every export final")
    alice_again = await Watcher.connect(edge2, alice_token)
    bob_again = await Watcher.connect(edge1, bob_token)
    for watcher in (alice_again, bob_again):
        await watcher.sync()
    heard = {
        task: sum(len(w.events("excel.done", task_id=task)) for w in watchers)
        for owned, watchers in ((alice_tasks, (alice, alice_again)), (bob_tasks, (bob, bob_again)))
        for task in owned
    }
    # Redeliveries of the commands the broker took back are handled before the queues empty.
    depths = await until(lambda: _settled(private_broker, vhost_of(private_amqp_url)),
                         SETTLE_S, "work queues empty")

    audit = ledger.audit_exports(tasks, await ledger.build_log(tasks, system.up))
    lost = {
        "exports not done": audit.lost,
        "exports done twice": audit.duplicated,
        "completions not heard exactly once": {t: n for t, n in heard.items() if n != 1},
        "notifications still pending": ledger.rows(
            "SELECT id FROM notifications WHERE delivered_at IS NULL"),
        "commands dead-lettered": {q: n for q, n in depths.items() if n and q.endswith(".dead")},
    }
    assert lost == {key: type(value)() for key, value in lost.items()}, audit.report()
    # The two exports refused while the broker was away are recorded as failed, not lost
    # silently: their requesters were told.
    failed = [row for row in ledger.rows("SELECT id, status, error_code FROM export_tasks")
              if row["id"] not in tasks]
    assert [(r["status"], r["error_code"]) for r in failed] == [("failed", "unavailable")] * 2

    # The logs: every replica logged the loss and the reconnection once each; the restart
    # put nothing at ERROR, and no traceback, in any service's log.
    for name in system.children():
        await asyncio.to_thread(
            system.up.wait_for, rf"^{name}\s+\| \S+ INFO\s+{RECONNECTED}", SETTLE_S
        )
    log = ServiceLog.parse(system.up.output().splitlines(), system.children())
    errors = [r for r in log.records if r.level in {"ERROR", "CRITICAL"}]
    assert errors == [], "\n".join(r.text for r in errors)
    tracebacks = [r for r in log.records if r.traceback]
    assert tracebacks == [], "\n".join(r.text for r in tracebacks)
    changes = {name: (log.count(name, "WARNING", LOST), log.count(name, "INFO", RECONNECTED))
               for name in system.children()}
    assert changes == {name: (1, 1) for name in system.children()}, changes

    for watcher in (alice, bob, alice_again, bob_again):
        await watcher.close()


@dataclass
class Record:
    """One record of a service as `warren up` shows it, with its traceback lines if any."""

    child: str
    level: str
    message: str  # with its fields
    more: list[str] = field(default_factory=list)

    @property
    def traceback(self) -> bool:
        return any("Traceback (most recent call last)" in line for line in self.more)

    @property
    def text(self) -> str:
        return "\n".join([f"{self.child} {self.level} {self.message}", *self.more])


@dataclass
class ServiceLog:
    """The services' records in `warren up`'s output (the Cat's and the supervisor's aside)."""

    records: list[Record]

    @classmethod
    def parse(cls, lines: Iterable[str], children: Iterable[str]) -> ServiceLog:
        names = set(children)
        records: list[Record] = []
        last: dict[str, Record] = {}
        for line in lines:
            child = line.split(" ", 1)[0]
            if child not in names:
                continue
            match = RECORD.match(line)
            if match:
                last[child] = record = Record(child, match["level"], match["message"])
                records.append(record)
            elif child in last:  # a line of the record before it: its traceback
                last[child].more.append(line)
        return cls(records)

    def count(self, child: str, level: str, message: str) -> int:
        return sum(1 for r in self.records
                   if (r.child, r.level) == (child, level) and r.message.startswith(message))


async def _none_ready(system: System) -> bool:
    states = await asyncio.gather(*(system.ready(name) for name in system.children()))
    return not any(states)


def _settled(broker: PrivateBroker, vhost: str) -> dict[str, int] | None:
    """Every queue's depth, once no command waits or is being handled."""
    depths = broker.queue_depths(vhost)
    busy = [name for name, n in depths.items() if n and not name.endswith(".dead")
            and name.startswith(("warren.cmd.", "warren.runner.runs"))]
    return None if busy else depths
