"""A task's hold (shared/db/exports.py, TaskHold) on a real PostgreSQL server and on a
SQLite file: one holder at a time, let go on release or when the holder's connection or
process ends; always free on an in-memory database."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from shared.db import make_engine, session_factory
from shared.db.exports import ExportStore


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'warren.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgres", "sqlite_file"])
def engine(request: pytest.FixtureRequest) -> Engine:
    found: Engine = request.getfixturevalue(request.param)
    return found


def test_one_holder_at_a_time_until_it_lets_go(engine: Engine) -> None:
    store = ExportStore(session_factory(engine))
    first, second = store.hold("t1"), store.hold("t1")
    assert first.take()
    assert not second.take()
    assert not second.take(wait_s=0.2)  # waited in vain: the first still has it
    assert store.hold("t2").take()  # another task's hold is another lock
    first.release()
    assert second.take(wait_s=5)
    assert not first.take()  # released for good
    second.release()
    second.release()  # idempotent


def test_a_hold_ends_with_its_holders_connection(postgres: Engine) -> None:
    # A worker that dies: PostgreSQL ends its backend, and the lock with it.
    store = ExportStore(session_factory(postgres))
    dead = store.hold("t1")
    assert dead.take()
    waiter = store.hold("t1")
    assert not waiter.take()
    with postgres.connect() as admin:
        # Only this test's throw-away database: the server is shared.
        ended = admin.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )).scalars().all()
    assert ended == [True]
    assert waiter.take(wait_s=10)
    waiter.release()
    dead.release()  # its connection is broken already: never raises


def test_release_from_another_thread_waits_for_a_take_in_progress(engine: Engine) -> None:
    store = ExportStore(session_factory(engine))
    holder, waiter = store.hold("t1"), store.hold("t1")
    assert holder.take()
    taken: list[bool] = []
    waiting = threading.Thread(target=lambda: taken.append(waiter.take(wait_s=1.0)))
    waiting.start()
    waiter.release()  # as a cancelled handler does: after the wait, and nothing leaks
    waiting.join(10)
    assert taken == [False]
    holder.release()
    after = store.hold("t1")
    assert after.take()  # nobody kept the lock
    after.release()


def test_on_sqlite_a_hold_ends_with_its_holders_process(sqlite_file: Engine) -> None:
    # A worker killed mid-build: the kernel drops its lock with its process.
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from shared.db import make_engine, session_factory;"
            "from shared.db.exports import ExportStore;"
            f"hold = ExportStore(session_factory(make_engine({str(sqlite_file.url)!r}))).hold('t1');"
            "assert hold.take(); print('held', flush=True); sys.stdin.read()"
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        store = ExportStore(session_factory(sqlite_file))
        waiter = store.hold("t1")
        assert not waiter.take()
        holder.kill()
        holder.wait(10)
        assert waiter.take(wait_s=10)
        waiter.release()
    finally:
        holder.kill()
        holder.wait(10)


def test_in_memory_a_hold_is_always_free() -> None:
    store = ExportStore(session_factory(make_engine("sqlite://")))
    first, second = store.hold("t1"), store.hold("t1")
    assert first.take() and second.take()
    first.release()
    second.release()
