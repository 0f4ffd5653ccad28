"""frames, connections, sessions, tasks

Revision ID: 0001
Revises:
Create Date: 2026-11-26 13:22:41.843808
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "connections",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("client_addr", sa.Text(), nullable=True),
        sa.Column("opened_at_us", sa.BigInteger(), nullable=False),
        sa.Column("closed_at_us", sa.BigInteger(), nullable=True),
        sa.Column("close_code", sa.Integer(), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.Column("closed_by", sa.String(length=16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("frame_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connections")),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("orchestrator_id", sa.Text(), nullable=True),
        sa.Column("session_type", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("task_id", sa.Text(), nullable=True),
        sa.Column("task_description", sa.Text(), nullable=True),
        sa.Column("first_seen_us", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_us", sa.BigInteger(), nullable=False),
        sa.Column("started_at_us", sa.BigInteger(), nullable=True),
        sa.Column("ended_at_us", sa.BigInteger(), nullable=True),
        sa.Column("frame_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sessions_last_seen_us"), ["last_seen_us"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_sessions_status"), ["status"], unique=False)

    op.create_table(
        "tasks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("first_seen_us", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_us", sa.BigInteger(), nullable=False),
        sa.Column("started_at_us", sa.BigInteger(), nullable=True),
        sa.Column("ended_at_us", sa.BigInteger(), nullable=True),
        sa.Column("frame_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("session_id", "task_id", name=op.f("uq_tasks_session_id_task_id")),
    )
    op.create_table(
        "frames",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "connection_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("received_at_us", sa.BigInteger(), nullable=False),
        sa.Column("monotonic_ns", sa.BigInteger(), nullable=False),
        sa.Column("opcode", sa.SmallInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=True),
        sa.Column("session_id", sa.Text(), nullable=True),
        sa.Column("task_id", sa.Text(), nullable=True),
        sa.Column("parse_error", sa.String(length=16), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("payload_bytes", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["connection_id"], ["connections.id"], name=op.f("fk_frames_connection_id_connections")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_frames")),
    )
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_frames_received_at_us"), ["received_at_us"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_frames_session_id_id"),
            ["session_id", "id"],
            unique=False,
            sqlite_where=sa.text("session_id IS NOT NULL"),
            postgresql_where=sa.text("session_id IS NOT NULL"),
        )
        batch_op.create_index(
            batch_op.f("ix_frames_task_id_id"),
            ["task_id", "id"],
            unique=False,
            sqlite_where=sa.text("task_id IS NOT NULL"),
            postgresql_where=sa.text("task_id IS NOT NULL"),
        )
        batch_op.create_index(batch_op.f("ix_frames_type_id"), ["type", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_frames_type_id"))
        batch_op.drop_index(
            batch_op.f("ix_frames_task_id_id"),
            sqlite_where=sa.text("task_id IS NOT NULL"),
            postgresql_where=sa.text("task_id IS NOT NULL"),
        )
        batch_op.drop_index(
            batch_op.f("ix_frames_session_id_id"),
            sqlite_where=sa.text("session_id IS NOT NULL"),
            postgresql_where=sa.text("session_id IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_frames_received_at_us"))

    op.drop_table("frames")
    op.drop_table("tasks")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_status"))
        batch_op.drop_index(batch_op.f("ix_sessions_last_seen_us"))

    op.drop_table("sessions")
    op.drop_table("connections")
