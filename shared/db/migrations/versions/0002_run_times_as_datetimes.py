"""Run times as timezone-aware datetimes, as every other table keeps its times.

The first release kept the four times of a run as Unix seconds (floats). Each becomes a
``DateTime(timezone=True)`` column holding the same instant, to the microsecond: a new
column is filled from the old one in Python, the same way on SQLite and PostgreSQL,
then takes its place.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

TIMES: Final = ("created_at", "started_at", "finished_at", "heartbeat_at")
REQUIRED: Final = frozenset({"created_at", "heartbeat_at"})
#: Rows converted per statement, so that a long history is never all in memory at once.
CHUNK: Final = 1000


def upgrade() -> None:
    _retype(sa.Float(), sa.DateTime(timezone=True), _from_unix)


def downgrade() -> None:
    _retype(sa.DateTime(timezone=True), sa.Float(), _to_unix)


def _from_unix(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _to_unix(value: datetime | None) -> float | None:
    if value is None:
        return None
    # SQLite reads the column back naive; it was written in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def _retype(old: sa.types.TypeEngine[Any], new: sa.types.TypeEngine[Any],
            convert: Callable[[Any], Any]) -> None:
    """Replace each time column of ``runs`` by a column of type ``new`` with the same
    instants; the rows keep everything else."""
    with op.batch_alter_table("runs") as batch:
        for name in TIMES:
            batch.add_column(sa.Column(f"{name}_new", new, nullable=True))
    runs = sa.table(
        "runs",
        sa.column("id", sa.String()),
        *(sa.column(name, old) for name in TIMES),
        *(sa.column(f"{name}_new", new) for name in TIMES),
    )
    fill = (
        sa.update(runs)
        .where(runs.c.id == sa.bindparam("run_id"))
        .values({f"{name}_new": sa.bindparam(f"value_{name}") for name in TIMES})
    )
    connection = op.get_bind()
    after = ""
    while True:
        rows = connection.execute(
            sa.select(runs.c.id, *(runs.c[name] for name in TIMES))
            .where(runs.c.id > after)
            .order_by(runs.c.id)
            .limit(CHUNK)
        ).all()
        if not rows:
            break
        connection.execute(fill, [
            {"run_id": row.id, **{f"value_{name}": convert(row._mapping[name]) for name in TIMES}}
            for row in rows
        ])
        after = rows[-1].id
    with op.batch_alter_table("runs") as batch:
        for name in TIMES:
            batch.drop_column(name)
        for name in TIMES:
            batch.alter_column(f"{name}_new", new_column_name=name, existing_type=new,
                               nullable=name not in REQUIRED)
