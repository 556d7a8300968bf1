"""PostgreSQL briefly unreachable (every service reaches it through a TCP proxy, which
the test cuts and restores): clear errors while it is away, then recovery without
restarting anything, and the commands consumed meanwhile are not lost."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Callable

from tests.chaos.ledger import Ledger
from tests.chaos.watch import Watcher, api, is_event
from tests.support.private_broker import PrivateBroker
from tests.support.system import System
from tests.support.tcp_proxy import TcpProxy

SETTLE_S = 60.0
UNAVAILABLE = {
    "error": "database_unavailable", "message": "the database is unavailable; retry later",
}


def retrying(run_id: str) -> re.Pattern[str]:
    """A runner's log line: work on this run met the database away, and is tried again."""
    return re.compile(rf"^runner-\d+\s+\|.*database unavailable; trying again .*correlation_id={run_id}\b")


async def test_a_database_outage_gives_clear_errors_then_recovers_losing_nothing(
    system: System,
    postgres_proxy: TcpProxy,
    private_broker: PrivateBroker,
    private_amqp_url: str,
    ledger: Ledger,
    token_for: Callable[..., str],
) -> None:
    edge = system.port("edge-1")
    token = token_for("alice")
    alice = await Watcher.connect(edge, token)
    pids = {name: system.pid(name) for name in system.children()}
    # An export building when the database goes away: its result is stored once it is back.
    ack = await alice.request({"type": "excel.create", "data": {
        "report": "sample", "params": {"rows": 300}}})
    early_task = ack["data"]["id"]
    await alice.wait_for(is_event("excel.progress", task_id=early_task))
    # A run that ends (2 s after it starts) while the database is away: its end is
    # recorded once it is back.
    ack = await alice.request({"type": "run.start", "data": {
        "job": "countdown", "args": {"start": 20, "interval_s": 0.1}}})
    early_run = ack["data"]["id"]
    await alice.wait_for(is_event("run.started", run_id=early_run))

    postgres_proxy.cut()
    mark = system.up.mark()

    # The HTTP API answers 503 with a JSON body at once, not 500 and not a hang.
    for method, path, body in (
        ("GET", "/api/exports", None),
        ("GET", "/api/runs", None),
        ("GET", f"/api/runs/{early_run}", None),
        ("POST", "/api/exports", {"report": "sample", "params": {"rows": 10}}),
    ):
        assert await api(edge, token, path, method=method, body=body) == (503, UNAVAILABLE), path
    # So does logging in, which reads the users table.
    status, answer = await api(edge, token, "/auth/login", method="POST",
                               body={"username": "alice", "password": "whatever"})
    assert (status, answer) == (503, UNAVAILABLE)

    # On the socket: an export cannot be recorded, so it is refused with a clear error...
    refused = await alice.request({"type": "excel.create", "data": {
        "report": "sample", "params": {"rows": 10}}})
    assert refused["type"] == "error" and refused["data"] == {
        "code": "database_unavailable", "message": UNAVAILABLE["message"]}, refused
    # ...while a run needs no database at the edge: the command is queued, and the runner
    # that takes it retries in place until the database is back, instead of returning it
    # to the queue until the delivery limit dead-letters it.
    ack = await alice.request({"type": "run.start", "data": {
        "job": "lines", "args": {"count": 3}}})
    assert ack["type"] == "ack", ack
    outage_run = ack["data"]["id"]
    await alice.wait_for(lambda f: is_event("run.output", run_id=early_run)(f)
                         and "liftoff" in f["data"]["lines"])
    for run_id in (outage_run, early_run):  # the new run's start and the early run's end
        await asyncio.to_thread(system.up.wait_for, retrying(run_id), 30, mark)
    assert not alice.closed
    # A socket opens (tokens are checked without the database in development), and its
    # pending notifications wait for a later one.
    late = await Watcher.connect(system.port("edge-2"), token)
    await late.sync()

    postgres_proxy.restore()

    # Nothing was restarted, and everything works again.
    finished = await alice.wait_for(is_event("run.finished", run_id=outage_run), SETTLE_S)
    assert finished["data"]["status"] == "completed" and finished["data"]["lines"] == 3, finished
    ended = await alice.wait_for(is_event("run.finished", run_id=early_run), SETTLE_S)
    assert ended["data"]["status"] == "completed", ended
    await alice.wait_for(is_event("excel.done", task_id=early_task), SETTLE_S)
    status, listed = await api(edge, token, "/api/runs")
    assert status == 200 and {early_run, outage_run} <= {r["run_id"] for r in listed["runs"]}
    ack = await alice.request({"type": "excel.create", "data": {
        "report": "sample", "params": {"rows": 10}}})
    assert ack["type"] == "ack", ack
    await alice.wait_for(is_event("excel.done", task_id=ack["data"]["id"]), SETTLE_S)
    status, body = await api(edge, token, "/api/exports", method="POST",
                             body={"report": "sample", "params": {"rows": 10}})
    assert status == 202, body
    await alice.wait_for(is_event("excel.done", task_id=body["task_id"]), SETTLE_S)
    assert {name: system.pid(name) for name in system.children()} == pids
    assert system.alive() == set(pids)
    await system.wait_ready()

    # Nothing went to a dead-letter queue; the refused export is recorded nowhere.
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(private_amqp_url).path.lstrip("/"))
    dead = {name: n for name, n in private_broker.queue_depths(vhost).items()
            if n and name.endswith(".dead")}
    assert dead == {}
    assert len(alice.events("run.finished", run_id=early_run)) == 1
    tasks = [early_task, ack["data"]["id"], body["task_id"]]
    audit = ledger.audit_exports(tasks, await ledger.build_log(tasks, system.up))
    assert not audit.lost and not audit.duplicated, audit.report()
    assert sorted(ledger.export_status()) == sorted(tasks)  # the two refused left no row
    await alice.close()
    await late.close()
