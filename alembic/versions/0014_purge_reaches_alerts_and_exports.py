"""purge reaches alerts and exports: the indexes by session

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 11:05:00

A purged session takes its delivered alerts and its export cursor rows with it
(recorder.db.cleanup.forget): each found through the session's id, here indexed, so
that a purge costs what the session holds, not what the outbox holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_alerts_session_id"), "alerts", ["session_id"])
    op.create_index(op.f("ix_otel_exports_session_id"), "otel_exports", ["session_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_otel_exports_session_id"), table_name="otel_exports")
    op.drop_index(op.f("ix_alerts_session_id"), table_name="alerts")
