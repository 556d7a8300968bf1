"""Each service's replica SIGKILLed mid-work, with its children: the work is redelivered
or marked failed, never stuck and never done twice; the surviving replica carries on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.chaos.ledger import Ledger
from tests.chaos.watch import Watcher, api, is_event, until
from tests.support.system import System

EXPORT_ROWS = 300  # about 3 s of building (WARREN_EXCEL_TEST_ROW_DELAY_S)
SETTLE_S = 60.0


async def test_a_runner_killed_mid_run_fails_the_run_once_and_the_other_takes_new_runs(
    system: System, ledger: Ledger, token_for: Callable[..., str]
) -> None:
    alice = await Watcher.connect(system.port("edge-1"), token_for("alice"))
    ack = await alice.request({"type": "run.start", "data": {
        "job": "countdown", "args": {"start": 100, "interval_s": 0.1}}})
    run_id = ack["data"]["id"]
    started = await alice.wait_for(is_event("run.started", run_id=run_id))
    await alice.wait_for(is_event("run.output", run_id=run_id))
    doomed = system.name_of(started["data"]["replica"])

    system.kill(doomed)  # the replica and its job process

    # The broker hands the run's delivery to the survivor, which finds the owner's
    # control queue gone and fails the run: once, with the reason.
    finished = await alice.wait_for(is_event("run.finished", run_id=run_id), SETTLE_S)
    assert finished["data"]["status"] == "failed", finished
    assert finished["data"]["reason"] == f"runner {started['data']['replica']} died", finished
    record = ledger.run(run_id)
    assert record is not None and record["status"] == "failed", record
    # Never run twice: one start, and no output after the end.
    assert len(alice.events("run.started", run_id=run_id)) == 1
    assert len(alice.events("run.finished", run_id=run_id)) == 1

    # The survivor takes new work.
    ack = await alice.request({"type": "run.start", "data": {
        "job": "lines", "args": {"count": 5}}})
    second = ack["data"]["id"]
    done = await alice.wait_for(is_event("run.finished", run_id=second), SETTLE_S)
    assert done["data"]["status"] == "completed", done
    replica = alice.events("run.started", run_id=second)[0]["data"]["replica"]
    assert system.name_of(replica) != doomed
    assert len(alice.events("run.finished", run_id=run_id)) == 1
    await alice.close()


async def test_an_excel_worker_killed_mid_build_leaves_each_export_done_once(
    system: System, ledger: Ledger, token_for: Callable[..., str]
) -> None:
    alice = await Watcher.connect(system.port("edge-1"), token_for("alice"))
    tasks = []
    for _ in range(3):
        ack = await alice.request({"type": "excel.create", "data": {
            "report": "sample", "params": {"rows": EXPORT_ROWS}}})
        tasks.append(ack["data"]["id"])
    await alice.wait_for(is_event("excel.progress", task_id=tasks[0]))
    await alice.wait_for(is_event("excel.progress", task_id=tasks[1]))
    doomed = system.building_worker()
    assert doomed is not None

    system.kill(doomed)  # the worker, its fork server and the build child

    for task in tasks:
        await alice.wait_for(is_event("excel.done", task_id=task), SETTLE_S)
    audit = ledger.audit_exports(tasks, await ledger.build_log(tasks, system.up))
    assert not audit.lost and not audit.duplicated, audit.report()
    attempts = {row["id"]: row["attempts"] for row in ledger.rows(
        "SELECT id, attempts FROM export_tasks")}
    assert sorted(attempts[task] for task in tasks) == [1, 1, 2], attempts  # one rebuilt
    await alice.sync()
    assert {task: len(alice.events("excel.done", task_id=task)) for task in tasks} == {
        task: 1 for task in tasks}
    await alice.close()


async def test_a_relay_killed_mid_answer_interrupts_that_ask_once_and_the_other_answers(
    system: System, token_for: Callable[..., str]
) -> None:
    alice = await Watcher.connect(system.port("edge-1"), token_for("alice"))
    ack = await alice.request({"type": "chat.ask", "data": {"text": "!hold"}})
    held = ack["data"]["id"]
    await asyncio.wait_for(system.cat.holding.wait(), SETTLE_S)
    doomed = system.owner_of_port("relay", system.cat.peer_ports["alice"])

    system.kill(doomed)
    # The ask returns to the broker and the other replica answers it: interrupted, not
    # sent to the Cat again (an ask that kills relays cannot loop).
    error = await alice.wait_for(is_event("chat.error", ask_id=held), SETTLE_S)
    assert error["data"]["code"] == "interrupted", error
    system.cat.hold.set()  # the Cat's held answer goes to a socket nobody reads now

    ack = await alice.request({"type": "chat.ask", "data": {"text": "still there?"}})
    reply = await alice.wait_for(is_event("chat.reply", ask_id=ack["data"]["id"]), SETTLE_S)
    assert reply["data"]["text"] == "You said: still there?"
    assert system.owner_of_port("relay", system.cat.peer_ports["alice"]) != doomed
    assert system.cat.asks["alice"] == ["!hold", "still there?"]
    endings = alice.events("chat.reply", ask_id=held) + alice.events("chat.error", ask_id=held)
    assert len(endings) == 1, endings
    await alice.close()


async def test_an_edge_killed_its_clients_reconnect_to_the_other_and_get_what_they_missed(
    system: System, ledger: Ledger, token_for: Callable[..., str]
) -> None:
    token = token_for("alice")
    alice = await Watcher.connect(system.port("edge-1"), token)
    ack = await alice.request({"type": "excel.create", "data": {
        "report": "sample", "params": {"rows": EXPORT_ROWS}}})
    task = ack["data"]["id"]
    await alice.wait_for(is_event("excel.progress", task_id=task))

    system.kill("edge-1")
    assert await alice.wait_closed() is None  # no close frame: the TCP connection just ended

    # The export the edge accepted completes while alice has no socket anywhere...
    await until(lambda: ledger.export_status().get(task) == "done", SETTLE_S, "export done")
    assert ledger.rows("SELECT id FROM notifications WHERE delivered_at IS NULL") == [
        {"id": f"{task}-done"}]

    # ...and reaches her once she reconnects, to the other edge, right after welcome.
    again = await Watcher.connect(system.port("edge-2"), token)
    await again.sync()
    assert len(again.events("excel.done", task_id=task)) == 1, again.frames
    assert not ledger.rows("SELECT id FROM notifications WHERE delivered_at IS NULL")
    status, body = await api(system.port("edge-2"), token, f"/api/exports/{task}")
    assert status == 200 and body["status"] == "done", body

    # Once only: a later socket gets nothing again.
    third = await Watcher.connect(system.port("edge-2"), token)
    await third.sync()
    assert not third.events("excel.done")
    audit = ledger.audit_exports([task], await ledger.build_log([task], system.up))
    assert not audit.lost and not audit.duplicated, audit.report()
    for watcher in (again, third):
        await watcher.close()
