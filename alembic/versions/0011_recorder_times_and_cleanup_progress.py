"""the recorder's own end time of a session; cleanup that leaves a trace before it acts

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 09:00:00

Cleanup decided ages from the daemon's startedAt/endedAt: a daemon whose clock was
a year behind had a session recorded ten seconds earlier purged as 400 days old.
``sessions.finished_us`` is when the recorder recorded the session's final status,
on its own clock; ages are taken from it and from first/last seen. Existing
finished sessions take their last_seen_us: at or after their real end, so no
session becomes due sooner than it would have.

A session in the middle of a purge or compaction says so (``cleanup_state``), and
so does a run: its audit row is written when it starts (``state`` running, then
done, or interrupted when the recorder stopped under it), with the frames it had
deleted or compacted so far (``frames``), counted in each step's own transaction.
A stop that the daemon does not act on is retried with backoff per session, a few
times (``cleanup_matches.attempts``, ``retry_us``), then given up.

``sessions.active_us`` is when the recorder last saw the session at work, which the
cleanup's idle_for measures: last_seen_us moves with the recorder's own status
polls and stops too. Existing sessions take their last_seen_us.

``retired_ids`` holds, on SQLite, the highest id deleted from frames and from
connections: SQLite hands out one above the largest id left, and readers that
follow frames by id would miss frames given the ids of purged ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TERMINAL = (
    "completed",
    "failed",
    "stopped",
    "terminated",
    "cancelled",
    "canceled",
    "error",
    "unknown",
)


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finished_us", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("cleanup_state", sa.Text(), nullable=True))
    listed = ", ".join(f"'{s}'" for s in TERMINAL)
    op.execute(f"UPDATE sessions SET finished_us = last_seen_us WHERE status IN ({listed})")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("active_us", sa.BigInteger(), nullable=True))
    op.execute("UPDATE sessions SET active_us = last_seen_us")
    op.create_table(
        "retired_ids",
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("highest", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("table_name", name=op.f("pk_retired_ids")),
    )
    with op.batch_alter_table("cleanup_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("state", sa.String(16), server_default="done", nullable=False)
        )
        batch_op.add_column(
            sa.Column("frames", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("cleanup_matches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("retry_us", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_table("retired_ids")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("active_us")
    with op.batch_alter_table("cleanup_matches", schema=None) as batch_op:
        batch_op.drop_column("retry_us")
        batch_op.drop_column("attempts")
    with op.batch_alter_table("cleanup_runs", schema=None) as batch_op:
        batch_op.drop_column("frames")
        batch_op.drop_column("state")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("cleanup_state")
        batch_op.drop_column("finished_us")
