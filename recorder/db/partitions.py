"""PostgreSQL: ``frames`` partitioned by month of receive time (migration 0005).

Partitions are made ahead by the writer (this month and the next two), so a frame
always has one to go to; a default partition catches what nothing else takes (a
clock far off). Retention then drops whole months instead of deleting rows.
SQLite has one table and none of this.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Connection

log = structlog.get_logger("recorder.db")

AHEAD = 2


def month_start(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1_000_000


def months(from_us: int, count: int) -> list[tuple[str, int, int]]:
    """``count`` months from the one holding ``from_us``: (name, start µs, end µs)."""
    moment = datetime.fromtimestamp(from_us / 1e6, UTC)
    year, month = moment.year, moment.month
    found = []
    for _ in range(count):
        next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
        found.append(
            (
                f"frames_{year:04d}_{month:02d}",
                month_start(year, month),
                month_start(next_year, next_month),
            )
        )
        year, month = next_year, next_month
    return found


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(
        text("SELECT relkind::text FROM pg_class WHERE relname = 'frames'")
    ).scalar()
    return bool(kind == "p")


def ensure(conn: Connection, now_us: int, ahead: int = AHEAD) -> list[str]:
    """This month's partition and the next ``ahead`` ones; returns those created."""
    if not is_partitioned(conn):
        return []
    made = []
    for name, start, end in months(now_us, ahead + 1):
        exists = conn.execute(
            text("SELECT 1 FROM pg_class WHERE relname = :n"), {"n": name}
        ).first()
        if exists:
            continue
        try:
            with conn.begin_nested():
                conn.execute(
                    text(
                        f'CREATE TABLE "{name}" PARTITION OF frames FOR VALUES FROM ({start}) TO ({end})'
                    )
                )
            made.append(name)
        except Exception as exc:  # rows of that month already in the default partition
            log.warning(
                "cannot create a frames partition", partition=name, error=str(exc).splitlines()[0]
            )
    return made


def due(conn: Connection, before_us: int) -> list[str]:
    """Monthly partitions that end before ``before_us``, oldest first."""
    if not is_partitioned(conn):
        return []
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'frames' "
            "AND c.relname ~ '^frames_[0-9]{4}_[0-9]{2}$' ORDER BY c.relname"
        )
    ).all()
    found = []
    for (name,) in rows:
        year, month = int(name[7:11]), int(name[12:14])
        end = month_start(year + (month == 12), 1 if month == 12 else month + 1)
        if end <= before_us:
            found.append(name)
    return found
