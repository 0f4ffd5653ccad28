"""PostgreSQL: ``frames`` partitioned by month of receive time (migration 0005).

Partitions are made ahead by the writer (this month and the next two), so a frame
always has one to go to; a default partition catches what nothing else takes (a
clock far off). Retention then drops whole months instead of deleting rows.
SQLite has one table and none of this.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Connection

log = structlog.get_logger("recorder.db")

AHEAD = 2


def month_start(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1_000_000


class Month(NamedTuple):
    """A monthly partition of frames: its name, and its span (start, end) in µs."""

    name: str
    start: int
    end: int


def months(from_us: int, count: int) -> list[Month]:
    """``count`` months from the one holding ``from_us``: (name, start µs, end µs)."""
    moment = datetime.fromtimestamp(from_us / 1e6, UTC)
    year, month = moment.year, moment.month
    found = []
    for _ in range(count):
        next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
        found.append(
            Month(
                f"frames_{year:04d}_{month:02d}",
                month_start(year, month),
                month_start(next_year, next_month),
            )
        )
        year, month = next_year, next_month
    return found


def is_partitioned(conn: Connection) -> bool:
    from recorder.db.backend import backend_of

    if not backend_of(conn).partitioned:
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


def drop_due(conn: Connection, before_us: int, instance: str) -> list[tuple[str, int]]:
    """Retention: each monthly partition of frames that ends before ``before_us`` goes
    whole (DROP TABLE, no row-by-row delete), unless another recorder had a connection
    open during that month (its frames are its own to keep), or it holds frames of a
    session that is not due: active, known only from its stream, pinned, or ended after
    ``before_us`` (a session that began in an old month and ended yesterday). The
    rollups lose what it held; this recorder's sessions and closed connections left
    with no frame go too. Returns (partition, frames)."""
    dropped = []
    with conn.begin():
        due_now = due(conn, before_us)
    for name in due_now:
        year, month = int(name[7:11]), int(name[12:14])
        start = month_start(year, month)
        end = month_start(year + (month == 12), 1 if month == 12 else month + 1)
        with conn.begin():
            if _shared(conn, start, end, instance) or _holds_undue(conn, name, before_us):
                continue  # row by row, later, for what may go
            dropped.append((name, _drop(conn, name, start, end, instance)))
    return dropped


def _shared(conn: Connection, start: int, end: int, instance: str) -> bool:
    found = conn.execute(
        text(
            "SELECT 1 FROM connections WHERE instance <> :me AND opened_at_us < :end"
            " AND (closed_at_us IS NULL OR closed_at_us >= :start) LIMIT 1"
        ),
        {"me": instance, "start": start, "end": end},
    ).first()
    return found is not None


def _holds_undue(conn: Connection, name: str, before_us: int) -> bool:

    from recorder.protocol.statuses import TERMINAL_SQL

    found = conn.execute(
        text(
            f'SELECT 1 FROM "{name}" WHERE session_id IN ('
            "SELECT id FROM sessions WHERE status IS NULL OR NOT ("
            f"status IN {TERMINAL_SQL} AND coalesce(finished_us, last_seen_us) < :before)"
            " UNION SELECT session_id FROM pins) LIMIT 1"
        ),
        {"before": before_us},
    ).first()
    return found is not None


def _drop(conn: Connection, name: str, start: int, end: int, instance: str) -> int:
    from sqlalchemy import delete, select, update

    from recorder.db.cleanup import forget
    from recorder.db.schema import connections, frame_days, pins, sessions
    from recorder.protocol.statuses import TERMINAL_STATUSES

    per_connection = conn.execute(
        text(f'SELECT connection_id, count(*) FROM "{name}" GROUP BY 1')
    ).all()
    per_session = conn.execute(
        text(f'SELECT session_id, count(*) FROM "{name}" WHERE session_id IS NOT NULL GROUP BY 1')
    ).all()
    conn.execute(text(f'DROP TABLE "{name}"'))
    for cid, n in per_connection:
        conn.execute(
            update(connections)
            .where(connections.c.id == cid)
            .values(frame_count=connections.c.frame_count - n)
        )
    for sid, n in per_session:
        conn.execute(
            update(sessions)
            .where(sessions.c.id == sid)
            .values(frame_count=sessions.c.frame_count - n)
        )
    conn.execute(delete(frame_days).where(frame_days.c.day_us >= start, frame_days.c.day_us < end))
    emptied = conn.execute(
        select(sessions.c.id).where(
            sessions.c.instance == instance,
            sessions.c.frame_count <= 0,
            sessions.c.status.in_(sorted(TERMINAL_STATUSES)),
            sessions.c.id.not_in(select(pins.c.session_id)),
        )
    )
    forget(conn, [sid for (sid,) in emptied])
    # Only the closed connections this month emptied, never ones that carried nothing.
    conn.execute(
        delete(connections).where(
            connections.c.id.in_([cid for cid, _ in per_connection]),
            connections.c.closed_at_us.is_not(None),
            connections.c.frame_count <= 0,
        )
    )
    return sum(n for _, n in per_connection)
