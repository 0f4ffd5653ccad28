"""alerts: the outbox of alerts raised by rules, their targets and delivery attempts

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 09:00:00

Every alert goes into ``alerts`` before anything is sent; (rule, subject, occurrence,
kind) is its dedupe key, so that an alert raised again after a restart is not stored
(nor sent) twice. ``alert_targets`` holds one row per alert and target until it is
delivered: the deliverer reads the pending and due ones by ``next_us`` (a partial
index: delivered pairs leave it), so retries with backoff survive restarts.
``alert_deliveries`` records every attempt and what the target answered.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As recorder.db.schema.Id: SQLite autoincrements only an INTEGER PRIMARY KEY.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("instance", sa.Text(), server_default="default", nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("occurrence", sa.Text(), nullable=False),
        sa.Column("what", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=True),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("connection_id", sa.BigInteger(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("raised_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint(
            "rule",
            "subject",
            "occurrence",
            "kind",
            name=op.f("uq_alerts_rule_subject_occurrence_kind"),
        ),
    )
    op.create_index(op.f("ix_alerts_raised_us"), "alerts", ["raised_us"])
    op.create_table(
        "alert_targets",
        sa.Column("alert_id", Id, nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("done", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_us", sa.BigInteger(), nullable=True),
        sa.Column("last_answer", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_alert_targets_alert_id_alerts")
        ),
        sa.PrimaryKeyConstraint("alert_id", "target", name=op.f("pk_alert_targets")),
    )
    op.create_index(
        op.f("ix_alert_targets_next_us"),
        "alert_targets",
        ["next_us"],
        sqlite_where=sa.text("next_us IS NOT NULL"),
        postgresql_where=sa.text("next_us IS NOT NULL"),
    )
    op.create_table(
        "alert_deliveries",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("alert_id", Id, nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("ok", sa.SmallInteger(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_alert_deliveries_alert_id_alerts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_deliveries")),
    )
    op.create_index(op.f("ix_alert_deliveries_alert_id_id"), "alert_deliveries", ["alert_id", "id"])


def downgrade() -> None:
    op.drop_table("alert_deliveries")
    op.drop_table("alert_targets")
    op.drop_table("alerts")
