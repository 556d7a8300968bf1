"""The schema's migrations: on SQLite and on PostgreSQL, fresh, concurrent, and from a
database of the first release that had none."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from shared.db import UserStore, create_schema, make_engine, session_factory
from shared.db.models import Base
from shared.db.runs import RunStatus, RunStore
from shared.db.schema import BASELINE, current_revision, head_revision, schema_config
from services.ws_edge.handlers.runs import summary

#: Replicas starting at the same instant, round after round, each round on a new database.
#: On SQLite two of them switching a new database to WAL at the same moment used to fail
#: one with "database is locked" in a round out of 15 or so: hence the many rounds.
REPLICAS: Final = 6
ROUNDS: Final = {"sqlite": 100, "postgresql": 5}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'warren.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    made = make_engine(url)
    request.addfinalizer(made.dispose)
    return made


@pytest.fixture
def empty_database(engine: Engine, tmp_path: Path) -> Callable[[], str]:
    """Makes an empty database on the engine's server and returns its URL: a new SQLite
    file (in the journal mode SQLite starts with), or the PostgreSQL database emptied."""
    numbers = itertools.count()

    def make() -> str:
        if engine.dialect.name == "sqlite":
            return f"sqlite:///{tmp_path / f'empty-{next(numbers)}.db'}"
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        return engine.url.render_as_string(hide_password=False)

    return make


def first_release_database(engine: Engine) -> None:
    """Make the tables as the first release's ``create_all`` did (revision 0001 creates
    exactly those), without the ``alembic_version`` it did not have."""
    with engine.begin() as connection:
        command.upgrade(schema_config(connection), BASELINE)
        connection.execute(text("DROP TABLE alembic_version"))


def differences(engine: Engine) -> list[object]:
    """What Alembic's autogenerate would still change to match the models: nothing, if the
    migrations make exactly the models' schema."""
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_a_fresh_database_gets_the_models_schema_at_the_newest_revision(engine: Engine) -> None:
    create_schema(engine)
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []
    create_schema(engine)  # again, as every later start does: nothing to do
    assert current_revision(engine) == head_revision()


def test_replicas_starting_together_migrate_once(
    engine: Engine, empty_database: Callable[[], str]
) -> None:
    for _ in range(ROUNDS[engine.dialect.name]):
        url = empty_database()
        replicas = [make_engine(url) for _ in range(REPLICAS)]
        together = threading.Barrier(REPLICAS)

        def start(replica: Engine) -> None:
            together.wait(timeout=60)
            create_schema(replica)

        try:
            with ThreadPoolExecutor(REPLICAS) as pool:
                list(pool.map(start, replicas))  # raises what any of them raised
            one = replicas[0]
            assert current_revision(one) == head_revision()
            with one.connect() as connection:
                versions = connection.execute(text("SELECT count(*) FROM alembic_version"))
                assert versions.scalar() == 1
                if one.dialect.name == "sqlite":
                    mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
                    assert mode == "wal"
        finally:
            for replica in replicas:
                replica.dispose()
    last = make_engine(url)
    try:
        assert differences(last) == []
    finally:
        last.dispose()


def test_a_database_of_the_first_release_is_adopted_with_its_data(engine: Engine) -> None:
    first_release_database(engine)
    UserStore(session_factory(engine)).add("alice", "pw-alice-123", groups=("team",))
    # Runs of the first release, with their times in Unix seconds.
    insert_run = text(
        "INSERT INTO runs (id, owner, job, args, replica, status, reason, exit_code,"
        " created_at, started_at, finished_at, heartbeat_at, line_count, output_bytes, tail)"
        " VALUES (:id, 'alice', 'lines', '{}', :replica, :status, NULL, NULL,"
        " :created, :started, :finished, :heartbeat, 3, 30, '[\"c\"]')"
    )
    with engine.begin() as connection:
        connection.execute(insert_run, [
            {"id": "done", "replica": "rep-a", "status": "completed", "created": 1717243200.25,
             "started": 1717243201.5, "finished": 1717243261.125, "heartbeat": 1717243260.0},
            {"id": "waiting", "replica": None, "status": "queued", "created": 1717243300.000001,
             "started": None, "finished": None, "heartbeat": 1717243300.000001},
        ])
    assert "alembic_version" not in inspect(engine).get_table_names()

    create_schema(engine)
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []
    user = UserStore(session_factory(engine)).authenticate("alice", "pw-alice-123")
    assert user is not None and user.groups == ("team",)
    runs = RunStore(session_factory(engine))
    done, waiting = runs.get("done"), runs.get("waiting")
    assert done is not None and waiting is not None
    assert (done.created_at, done.started_at, done.finished_at, done.heartbeat_at) == (
        at(1717243200.25), at(1717243201.5), at(1717243261.125), at(1717243260.0))
    assert (done.status, done.replica, done.line_count, done.tail) == (
        RunStatus.COMPLETED, "rep-a", 3, ["c"])
    assert (waiting.created_at, waiting.started_at, waiting.finished_at) == (
        at(1717243300.000001), None, None)
    # The HTTP API shows the same Unix seconds as before.
    shown = summary(done)
    assert (shown["queued_at"], shown["started_at"], shown["finished_at"]) == (
        1717243200.25, 1717243201.5, 1717243261.125)
    assert shown["duration_s"] == 59.625
    assert [r.id for r in runs.activity("alice", since=at(1717243250), limit=5)] == ["waiting"]


def test_run_times_survive_a_downgrade_and_upgrade(engine: Engine) -> None:
    create_schema(engine)
    runs = RunStore(session_factory(engine))
    runs.create("r1", "bob", "lines", {}, max_per_user=1, now=at(1717243200.5))
    runs.claim("r1", "rep-a", now=at(1717243201.000007))
    before = runs.get("r1")

    with engine.begin() as connection:
        command.downgrade(schema_config(connection), BASELINE)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT created_at, started_at, finished_at FROM runs"))
        assert tuple(row.one()) == (1717243200.5, 1717243201.000007, None)

    create_schema(engine)
    assert current_revision(engine) == head_revision()
    assert runs.get("r1") == before


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)
