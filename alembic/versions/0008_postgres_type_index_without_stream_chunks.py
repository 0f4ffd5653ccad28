"""PostgreSQL: the index by type leaves out stream_chunk (SQLite: nothing changes)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 19:00:00

stream_chunk frames are most of what a busy daemon sends, and no lookup needs an
index to find them: they are dense, and read by session. The index serves the rare
types (spawn_session, daemon_status_update, `recorder frames --type`). Measured on
the writer's COPY of a firehose: 166 000 against 185 000 frames/s with the entries
left out. SQLite keeps the whole index: its planner uses a partial index only when
a query's literal text implies the condition, and the readers bind the type.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_frames_type_id")
        op.execute(
            "CREATE INDEX ix_frames_type_id ON frames (type, id) WHERE type <> 'stream_chunk'"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_frames_type_id")
        op.execute("CREATE INDEX ix_frames_type_id ON frames (type, id)")
