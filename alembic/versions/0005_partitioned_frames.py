"""PostgreSQL: frames partitioned by month of receive time (SQLite: nothing changes)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from recorder.db.partitions import months
from recorder.times import now_us

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Everything about frames but the table itself, to make again on the new one.
INDEXES = (
    "CREATE INDEX ix_frames_type_id ON frames (type, id)",
    "CREATE INDEX ix_frames_received_at_us ON frames (received_at_us)",
    "CREATE INDEX ix_frames_session_id_id ON frames (session_id, id) WHERE session_id IS NOT NULL",
    "CREATE INDEX ix_frames_task_id_id ON frames (task_id, id) WHERE task_id IS NOT NULL",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return  # one table on SQLite: the migration history stays one, by dialect
    op.execute("ALTER TABLE frames RENAME TO frames_unpartitioned")
    for index in (
        "ix_frames_type_id",
        "ix_frames_received_at_us",
        "ix_frames_session_id_id",
        "ix_frames_task_id_id",
    ):
        op.execute(f"DROP INDEX IF EXISTS {index}")
    op.execute("ALTER TABLE frames_unpartitioned DROP CONSTRAINT pk_frames")
    op.execute(
        "ALTER TABLE frames_unpartitioned DROP CONSTRAINT fk_frames_connection_id_connections"
    )
    # The partition key must be in the primary key; ids keep coming from the same sequence.
    op.execute(
        """
        CREATE TABLE frames (
            id BIGINT NOT NULL DEFAULT nextval('frames_id_seq'),
            connection_id BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            direction VARCHAR(3) NOT NULL,
            received_at_us BIGINT NOT NULL,
            monotonic_ns BIGINT NOT NULL,
            opcode SMALLINT NOT NULL,
            size BIGINT NOT NULL,
            type TEXT,
            session_id TEXT,
            task_id TEXT,
            parse_error VARCHAR(16),
            payload TEXT,
            payload_bytes BYTEA,
            CONSTRAINT pk_frames PRIMARY KEY (id, received_at_us),
            CONSTRAINT fk_frames_connection_id_connections FOREIGN KEY (connection_id)
                REFERENCES connections (id)
        ) PARTITION BY RANGE (received_at_us)
        """
    )
    op.execute("ALTER SEQUENCE frames_id_seq OWNED BY frames.id")
    op.execute("CREATE TABLE frames_default PARTITION OF frames DEFAULT")
    oldest = bind.execute(text("SELECT min(received_at_us) FROM frames_unpartitioned")).scalar()
    start = min(oldest, now_us()) if oldest is not None else now_us()
    count = 3
    while months(start, count)[-1][2] <= now_us():
        count += 1
    for name, low, high in months(start, count + 2):
        op.execute(f'CREATE TABLE "{name}" PARTITION OF frames FOR VALUES FROM ({low}) TO ({high})')
    op.execute("INSERT INTO frames SELECT * FROM frames_unpartitioned")
    op.execute("DROP TABLE frames_unpartitioned")
    for statement in INDEXES:
        op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE frames RENAME TO frames_partitioned")
    op.execute("CREATE TABLE frames (LIKE frames_partitioned INCLUDING DEFAULTS)")
    op.execute("INSERT INTO frames SELECT * FROM frames_partitioned")
    # The sequence belongs to the old table: hand it over first, or the DROP takes it.
    op.execute("ALTER SEQUENCE frames_id_seq OWNED BY frames.id")
    op.execute("DROP TABLE frames_partitioned")
    op.execute("ALTER TABLE frames ADD CONSTRAINT pk_frames PRIMARY KEY (id)")
    op.execute(
        "ALTER TABLE frames ADD CONSTRAINT fk_frames_connection_id_connections "
        "FOREIGN KEY (connection_id) REFERENCES connections (id)"
    )
    for statement in INDEXES:
        op.execute(statement)
