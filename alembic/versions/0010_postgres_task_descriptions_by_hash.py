"""PostgreSQL: tasks by description through a hash index (SQLite: nothing changes)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 20:00:00

A task's description is the text the client sent: a prompt of any length. A B-tree
entry must fit in a third of a page (2 704 bytes), so a longer description failed
its batch with "index row requires N bytes" on every retry, and the recording
stopped behind it. `frames --task` looks descriptions up by equality, which a hash
index serves at any length. SQLite's B-tree has no such limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_tasks_description")
        op.execute("CREATE INDEX ix_tasks_description ON tasks USING hash (description)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_tasks_description")
        op.execute("CREATE INDEX ix_tasks_description ON tasks (description)")
