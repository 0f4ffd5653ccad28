"""cleanup: pins, policy matches, the audit trail, requests to a running service

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pins",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("pinned_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_pins")),
    )
    op.create_table(
        "cleanup_matches",
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("first_matched_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("policy", "session_id", name=op.f("pk_cleanup_matches")),
    )
    op.create_table(
        "cleanup_runs",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.SmallInteger(), nullable=False),
        sa.Column("started_us", sa.BigInteger(), nullable=False),
        sa.Column("ended_us", sa.BigInteger(), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("acted", sa.Integer(), nullable=False),
        sa.Column("actions", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cleanup_runs")),
    )
    with op.batch_alter_table("cleanup_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cleanup_runs_started_us"), ["started_us"], unique=False
        )
    op.create_table(
        "cleanup_requests",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("policy", sa.Text(), nullable=True),
        sa.Column("dry_run", sa.SmallInteger(), nullable=False),
        sa.Column("requested_us", sa.BigInteger(), nullable=False),
        sa.Column("taken_us", sa.BigInteger(), nullable=True),
        sa.Column("done_us", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cleanup_requests")),
    )


def downgrade() -> None:
    op.drop_table("cleanup_requests")
    with op.batch_alter_table("cleanup_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cleanup_runs_started_us"))
    op.drop_table("cleanup_runs")
    op.drop_table("cleanup_matches")
    op.drop_table("pins")
