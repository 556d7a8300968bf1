"""Commands a user service has handled, for idempotency (shared/db/commands.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "handled_commands",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("command_id", sa.String(length=128), nullable=False),
        sa.Column("first_claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("service", "command_id"),
    )
    op.create_index(
        "ix_handled_commands_completed_at", "handled_commands", ["completed_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_handled_commands_completed_at", table_name="handled_commands")
    op.drop_table("handled_commands")
