"""PostgreSQL: a batch's connection counts, session changes and daily tallies in
one statement.

Each statement is a round trip to the server, and under load a round trip costs
about a millisecond, whatever it does: a batch's index changes written one
statement each (count, read the sessions, update them, tally the day) took a
quarter of the database process's time. Here they travel as arrays and are
applied by one statement of data-modifying CTEs (``unnest``, ``INSERT ... ON
CONFLICT ... DO UPDATE``). SQLite, in the same process, pays no round trip and
keeps the statement-per-change path (:mod:`recorder.db.index_statements`).

The merge rule is :func:`recorder.protocol.deltas.merged`, spelled in SQL from
the same ``NEWS``/``KEPT`` declarations: seen-times widen, counts add up, news
replaces the stored value unless the stored one is kept, and only in rows of the
recorder's own instance.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from recorder.protocol.deltas import SessionDelta
from recorder.protocol.index import IndexBatch
from recorder.protocol.statuses import TERMINAL_SQL

# SessionDelta's columns, in the order the statement's arrays carry them.
_NEWS = SessionDelta.NEWS
_TYPES = {
    "orchestrator_id": "text",
    "session_type": "text",
    "status": "text",
    "task_id": "text",
    "task_description": "text",
    "started_at_us": "bigint",
    "ended_at_us": "bigint",
    "last_error": "text",
}
assert set(_TYPES) == set(_NEWS)
# Every array of a session delta: its name (SessionDelta's attribute) and type.
_DELTA = (
    ("id", "text"),
    ("first_seen_us", "bigint"),
    ("last_seen_us", "bigint"),
    ("frame_count", "bigint"),
    ("creates", "boolean"),
    *((key, _TYPES[key]) for key in _NEWS),
    ("finished_us", "bigint"),
    ("ran", "boolean"),
    ("active_us", "bigint"),
    ("first_status", "text"),
    ("first_status_us", "bigint"),
)
# $1, $2: connection counts; then the delta's arrays, the days' five, the instance.
_DAYS = 3 + len(_DELTA)
_INSTANCE = f"${_DAYS + 5}::text"


def _merge() -> str:
    """SET clauses merging the delta ``d`` into the stored row ``s``: the rule of
    :func:`recorder.protocol.deltas.merged`, news only into the instance's own rows."""
    own = f"s.instance = {_INSTANCE}"
    clauses = [
        "first_seen_us = LEAST(s.first_seen_us, d.first_seen_us)",
        "last_seen_us = GREATEST(s.last_seen_us, d.last_seen_us)",
        "frame_count = s.frame_count + d.frame_count",
    ]
    for key in _NEWS:
        first, then = ("s", "d") if key in SessionDelta.KEPT else ("d", "s")
        clauses.append(
            f"{key} = CASE WHEN {own} THEN COALESCE({first}.{key}, {then}.{key}) ELSE s.{key} END"
        )
    # recorder.protocol.deltas.finished_at: a finished session keeps its end time,
    # unless the batch saw it run again.
    clauses.append(
        f"finished_us = CASE WHEN NOT {own} THEN s.finished_us "
        f"WHEN COALESCE(d.status, s.status) IN {TERMINAL_SQL} "
        f"THEN COALESCE(CASE WHEN s.status IN {TERMINAL_SQL} AND NOT d.ran THEN s.finished_us END, "
        "d.finished_us, GREATEST(s.last_seen_us, d.last_seen_us)) END"
    )
    # recorder.protocol.deltas.active_at (GREATEST leaves out nulls).
    clauses.append(
        f"active_us = CASE WHEN NOT {own} THEN s.active_us ELSE GREATEST(s.active_us, "
        "d.active_us, CASE WHEN s.status IS DISTINCT FROM d.first_status "
        "THEN d.first_status_us END) END"
    )
    return ", ".join(clauses)


def _statement() -> str:
    news = ", ".join(_NEWS)
    arrays = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_DELTA, start=3))
    names = ", ".join(name for name, _ in _DELTA)
    days = _DAYS
    # Rows that exist are updated; the rest, when the delta creates them, inserted.
    # A row inserted since this statement's snapshot (the conflict) was inserted by
    # another recorder: this one's database process writes one transaction at a
    # time. As another's row, it takes this batch's frames but not its news.
    return f"""
WITH counted AS (
    UPDATE connections AS c SET frame_count = c.frame_count + u.n
    FROM unnest($1::bigint[], $2::bigint[]) AS u(id, n)
    WHERE c.id = u.id
    RETURNING 1
), delta AS (
    SELECT * FROM unnest({arrays}) AS d({names})
), updated AS (
    UPDATE sessions AS s SET {_merge()}
    FROM delta AS d
    WHERE s.id = d.id
    RETURNING s.id
), created AS (
    INSERT INTO sessions AS s
        (id, instance, first_seen_us, last_seen_us, frame_count, {news}, finished_us, active_us)
    SELECT id, {_INSTANCE}, first_seen_us, last_seen_us, frame_count, {news},
           CASE WHEN status IN {TERMINAL_SQL} THEN COALESCE(finished_us, last_seen_us) END,
           COALESCE(GREATEST(active_us, first_status_us), first_seen_us)
    FROM delta AS d
    WHERE creates AND NOT EXISTS (SELECT 1 FROM sessions AS e WHERE e.id = d.id)
    ON CONFLICT (id) DO UPDATE SET
        first_seen_us = LEAST(s.first_seen_us, excluded.first_seen_us),
        last_seen_us = GREATEST(s.last_seen_us, excluded.last_seen_us),
        frame_count = s.frame_count + excluded.frame_count
    RETURNING s.id
), tallied AS (
    INSERT INTO frame_days AS f (day_us, type, direction, frames, bytes)
    SELECT * FROM unnest(${days}::bigint[], ${days + 1}::text[], ${days + 2}::text[],
                         ${days + 3}::bigint[], ${days + 4}::bigint[])
    ON CONFLICT (day_us, type, direction) DO UPDATE
    SET frames = f.frames + excluded.frames, bytes = f.bytes + excluded.bytes
    RETURNING 1
)
SELECT id FROM created UNION ALL SELECT id FROM updated
"""


STATEMENT = _statement()


def parameters(index: IndexBatch, instance: str) -> tuple[Any, ...]:
    """The statement's arrays for one batch."""
    counts = index.connection_frames
    sessions = index.sessions
    deltas = list(sessions.values())
    days = index.days
    day_keys = list(days)
    day_values = list(days.values())
    return (
        list(counts),
        list(counts.values()),
        list(sessions),
        *([getattr(d, name) for d in deltas] for name, _ in _DELTA[1:]),
        [k[0] for k in day_keys],
        [k[1] for k in day_keys],
        [k[2] for k in day_keys],
        [v[0] for v in day_values],
        [v[1] for v in day_values],
        instance,
    )


def apply(conn: Connection, index: IndexBatch, instance: str) -> set[str]:
    """Count, merge sessions and tally the day for one batch; returns the ids of its
    sessions that exist afterwards (their tasks may then be stored)."""
    result = conn.exec_driver_sql(STATEMENT, parameters(index, instance))
    return {row[0] for row in result}
