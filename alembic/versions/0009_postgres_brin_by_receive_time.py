"""PostgreSQL: frames by receive time through a BRIN index (SQLite: nothing changes)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 20:00:00

Frames arrive in receive-time order and stay where they were written, the case a
block-range index is made for: it keeps the smallest and largest time of each run
of pages instead of one B-tree entry a frame. `frames --since/--until` (its only
reader: retention drops partitions or purges by session) still finds its pages
without reading older ones. Measured on the writer's COPY of a firehose: the
server's CPU per frame about 4.4 against 3.8 µs. SQLite has no BRIN and
keeps its B-tree.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_frames_received_at_us")
        op.execute("CREATE INDEX ix_frames_received_at_us ON frames USING brin (received_at_us)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_frames_received_at_us")
        op.execute("CREATE INDEX ix_frames_received_at_us ON frames (received_at_us)")
