"""Alembic's environment: migrations run on the connection :func:`shared.db.schema.create_schema`
hands over, inside its transaction and under its lock. There is no alembic.ini and no URL
here: the services' engine is the only way in."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

import shared.db  # noqa: F401  (its modules register every table in Base.metadata)
from shared.db.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise TypeError("run migrations through shared.db.schema, which passes a connection")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters a table by copying it
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
