"""otel exports: the live export's cursor, and the indexes its read walks

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-15 09:00:00

``otel_endpoints`` holds each endpoint the live export sends to (a hash of its traces
URL, never its headers) and since when; ``otel_exports`` one row per session sent to
it, written once the endpoint took the spans. The export reads the sessions that
became due, in order of when they did: the finished ones by ``finished_us``, the
others by ``last_seen_us``, each through a partial index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_sessions_finished_us"),
        "sessions",
        ["finished_us"],
        sqlite_where=sa.text("finished_us IS NOT NULL"),
        postgresql_where=sa.text("finished_us IS NOT NULL"),
    )
    op.create_index(
        "ix_sessions_last_seen_us_unfinished",
        "sessions",
        ["last_seen_us"],
        sqlite_where=sa.text("finished_us IS NULL"),
        postgresql_where=sa.text("finished_us IS NULL"),
    )
    op.create_table(
        "otel_endpoints",
        sa.Column("endpoint_key", sa.Text(), nullable=False),
        sa.Column("since_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_key", name=op.f("pk_otel_endpoints")),
    )
    op.create_table(
        "otel_exports",
        sa.Column("endpoint_key", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("due_us", sa.BigInteger(), nullable=False),
        sa.Column("exported_us", sa.BigInteger(), nullable=False),
        sa.Column("spans", sa.Integer(), nullable=False),
        sa.Column("trace_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_key", "session_id", name=op.f("pk_otel_exports")),
    )
    op.create_index(
        op.f("ix_otel_exports_endpoint_key_due_us"), "otel_exports", ["endpoint_key", "due_us"]
    )


def downgrade() -> None:
    op.drop_table("otel_exports")
    op.drop_table("otel_endpoints")
    op.drop_index("ix_sessions_last_seen_us_unfinished", table_name="sessions")
    op.drop_index(op.f("ix_sessions_finished_us"), table_name="sessions")
