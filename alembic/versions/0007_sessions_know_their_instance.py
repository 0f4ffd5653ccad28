"""sessions and cleanup requests know their recorder (storage.instance)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 18:00:00

Recorders sharing one PostgreSQL database each record their own daemon. What one
recorder does about sessions (marking those its daemon's sessions_list no longer
names as lost, asking after the active ones when it reconnects, the cleanup
policies' stop, compact and purge) must only touch the sessions it recorded.
Existing rows take the instance of the connection that carried their first frame.
`recorder cleanup run` asks the recorder its configuration names (requests carry
it), and each cleanup run says which recorder ran it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("instance", sa.Text(), server_default="default", nullable=False)
        )
    # One index lookup per session (frames by session_id, id), and only where some
    # recorder had a name other than the default.
    op.execute(
        """
        UPDATE sessions SET instance = coalesce((
            SELECT c.instance FROM frames f JOIN connections c ON c.id = f.connection_id
            WHERE f.session_id = sessions.id ORDER BY f.id LIMIT 1
        ), 'default')
        WHERE EXISTS (SELECT 1 FROM connections WHERE instance <> 'default')
        """
    )
    # `recorder cleanup run` asks the recorder its configuration names, not any; the
    # audit trail says which recorder ran each run.
    for table in ("cleanup_requests", "cleanup_runs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("instance", sa.Text(), server_default="default", nullable=False)
            )


def downgrade() -> None:
    for table in ("cleanup_runs", "cleanup_requests"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("instance")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("instance")
