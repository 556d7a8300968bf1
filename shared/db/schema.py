"""The database schema, brought up to date by Alembic migrations when a service starts.

Every service calls :func:`create_schema` before it serves, and replicas start together,
so the migrations run in one transaction under a lock that serialises them across
processes: a PostgreSQL advisory lock, or on SQLite a lock file beside the database.
Whoever comes second finds the schema at the newest revision and does nothing.

SQLite's own write lock cannot serialise the switch to WAL, the journal mode that lets
readers and a writer work at once. The mode is stored in the database file, so it is
switched once, here, before the migrations' transaction (it cannot change inside one).
The switch takes a read lock and then upgrades it to the write lock, and SQLite refuses
that upgrade at once, with "database is locked" and without waiting out the busy
timeout (waiting could deadlock), while another connection holds the write lock: for
instance another replica switching at the same moment. Hence the lock file, held over
the switch and the migrations.

A database made before the schema had migrations (``create_all`` of the first release)
has the tables but no ``alembic_version``: it is stamped with :data:`BASELINE`, the
migration that creates exactly those tables, and upgraded from there.

A new migration: change the models, then, on a database at the newest revision,
``alembic.command.revision(schema_config(connection), message, autogenerate=True)`` and
review the file it writes under ``shared/db/migrations/versions/``.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS: Final = Path(__file__).with_name("migrations")
BASELINE: Final = "0001"
#: Any constant of our own: the key of the advisory lock migrations hold on PostgreSQL.
POSTGRES_LOCK_KEY: Final = 0x77617272656E  # "warren"
#: A table of the first release, present in every database it made.
FIRST_TABLE: Final = "users"


def schema_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def create_schema(engine: Engine) -> None:
    """Create the tables, or migrate them to the newest revision; safe to run concurrently."""
    with _sqlite_lock(engine), engine.connect() as connection:
        _begin(connection)
        current = MigrationContext.configure(connection).get_current_revision()
        if current != head_revision():  # else Alembic would load its environment for nothing
            config = schema_config(connection)
            if current is None and inspect(connection).has_table(FIRST_TABLE):
                command.stamp(config, BASELINE)
            command.upgrade(config, "head")
        connection.commit()


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None, "shared/db/migrations/versions holds no migration"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _sqlite_lock(engine: Engine) -> Iterator[None]:
    """Hold the lock file that serialises :func:`create_schema` on a SQLite database file.

    A blocking ``flock``: the next process goes on as soon as the lock is released, and
    the kernel releases it if its holder dies. The file is never deleted: a process could
    then lock the deleted file while another locks a new one.
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.lock", "ab") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _begin(connection: Connection) -> None:
    """Begin the transaction the migrations run in: on PostgreSQL under the advisory lock,
    on SQLite (under the lock file) once the database is in WAL mode."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
    elif dialect == "sqlite":
        connection.exec_driver_sql("PRAGMA journal_mode=WAL").close()
        # The sqlite3 module would begin only before the first write (DDL would commit
        # statement by statement): begin now, taking the write lock, so that services
        # already serving wait for the migrations as a whole.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
