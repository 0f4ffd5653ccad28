"""sessions by first seen, tasks by description, daily frame stats

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DAY_US = 86_400 * 1_000_000


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sessions_first_seen_us"), ["first_seen_us"], unique=False
        )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_description"), ["description"], unique=False)
    op.create_table(
        "frame_days",
        sa.Column("day_us", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("frames", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day_us", "type", "direction", name=op.f("pk_frame_days")),
    )
    # What is already recorded, counted once.
    op.execute(
        "INSERT INTO frame_days (day_us, type, direction, frames, bytes) "
        f"SELECT received_at_us - received_at_us % {DAY_US}, COALESCE(type, ''), direction, "
        "count(*), sum(size) FROM frames "
        f"GROUP BY received_at_us - received_at_us % {DAY_US}, COALESCE(type, ''), direction"
    )


def downgrade() -> None:
    op.drop_table("frame_days")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_description"))
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_first_seen_us"))
