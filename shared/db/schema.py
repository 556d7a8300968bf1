"""The database schema, brought up to date by Alembic migrations when a service starts.

Every service calls :func:`create_schema` before it serves, and replicas start together,
so the migrations run in one transaction under a lock that serialises them across
processes: a PostgreSQL advisory lock, or SQLite's write lock (``BEGIN IMMEDIATE``).
Whoever comes second finds the schema at the newest revision and does nothing.

A database made before the schema had migrations (``create_all`` of the first release)
has the tables but no ``alembic_version``: it is stamped with :data:`BASELINE`, the
migration that creates exactly those tables, and upgraded from there.

A new migration: change the models, then, on a database at the newest revision,
``alembic.command.revision(schema_config(connection), message, autogenerate=True)`` and
review the file it writes under ``shared/db/migrations/versions/``.
"""

from __future__ import annotations

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
    with engine.connect() as connection:
        _lock(connection)
        config = schema_config(connection)
        current = MigrationContext.configure(connection).get_current_revision()
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


def _lock(connection: Connection) -> None:
    """Begin the transaction the migrations run in, holding the lock that serialises them."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
    elif dialect == "sqlite":
        # The sqlite3 module would begin only before the first write, and without taking
        # the write lock: begin now, and take it, so a second process waits here.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
