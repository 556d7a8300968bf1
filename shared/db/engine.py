"""Engine and session factory. Built once at the entry point and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# A PostgreSQL server that does not answer fails a new connection after this long, as
# "database unavailable" (shared/db/outage.py), instead of after the TCP time-outs.
POSTGRES_CONNECT_TIMEOUT_S: Final = 5


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = (
        {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
        if parsed.get_backend_name() == "postgresql" else {}
    )
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # Only per-connection settings here. The journal mode (WAL) is stored in the database
    # file and switched once by shared/db/schema.py: switching it on every connect fails
    # at once with "database is locked" whenever another connection is writing.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
