"""PostgreSQL: a batch's connection counts, session changes and daily tallies in
one statement.

Each statement is a round trip to the server, and under load a round trip costs
about a millisecond, whatever it does: a batch's index changes written one
statement each (count, read the sessions, update them, tally the day) took a
quarter of the database process's time. Here they travel as arrays and are
applied by one statement of data-modifying CTEs (``unnest``, ``INSERT ... ON
CONFLICT ... DO UPDATE``). SQLite, in the same process, pays no round trip and
keeps the statement-per-change path (:mod:`recorder.db.index_statements`).

The merge rule is :func:`recorder.protocol.index.merged`, spelled in SQL from
the same ``NEWS``/``KEPT`` declarations: seen-times widen, counts add up, news
replaces the stored value unless the stored one is kept, and only in rows of the
recorder's own instance.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from recorder.protocol.index import TERMINAL_STATUSES, IndexBatch, SessionDelta

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
_TERMINAL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))


def _merge(source: str, own: str) -> str:
    """SET clauses merging ``source`` (a delta) into the stored row ``s``; news only
    where ``own`` holds (the row is the instance's own)."""
    clauses = [
        f"first_seen_us = LEAST(s.first_seen_us, {source}.first_seen_us)",
        f"last_seen_us = GREATEST(s.last_seen_us, {source}.last_seen_us)",
        f"frame_count = s.frame_count + {source}.frame_count",
    ]
    for key in _NEWS:
        first, then = ("s", source) if key in SessionDelta.KEPT else (source, "s")
        clauses.append(
            f"{key} = CASE WHEN {own} THEN COALESCE({first}.{key}, {then}.{key}) ELSE s.{key} END"
        )
    # recorder.protocol.index.finished_at: a finished session keeps its end time.
    clauses.append(
        f"finished_us = CASE WHEN NOT {own} THEN s.finished_us "
        f"WHEN COALESCE({source}.status, s.status) IN ({_TERMINAL}) "
        f"THEN COALESCE(CASE WHEN s.status IN ({_TERMINAL}) THEN s.finished_us END, "
        f"{source}.finished_us, GREATEST(s.last_seen_us, {source}.last_seen_us)) END"
    )
    return ", ".join(clauses)


def _statement() -> str:
    news = ", ".join(_NEWS)
    arrays = ", ".join(f"${i}::{_TYPES[key]}[]" for i, key in enumerate(_NEWS, start=8))
    days = len(_NEWS) + 8
    finished = days + 6
    return f"""
WITH counted AS (
    UPDATE connections AS c SET frame_count = c.frame_count + u.n
    FROM unnest($1::bigint[], $2::bigint[]) AS u(id, n)
    WHERE c.id = u.id
    RETURNING 1
), delta AS (
    SELECT * FROM unnest($3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                         $7::boolean[], {arrays}, ${finished}::bigint[])
    AS d(id, first_seen_us, last_seen_us, frame_count, creates, {news}, finished_us)
), created AS (
    INSERT INTO sessions AS s
        (id, instance, first_seen_us, last_seen_us, frame_count, {news}, finished_us)
    SELECT id, ${days + 5}::text, first_seen_us, last_seen_us, frame_count, {news},
           CASE WHEN status IN ({_TERMINAL}) THEN COALESCE(finished_us, last_seen_us) END
    FROM delta WHERE creates
    ON CONFLICT (id) DO UPDATE SET {_merge("excluded", "s.instance = excluded.instance")}
    RETURNING s.id
), updated AS (
    UPDATE sessions AS s SET {_merge("d", f"s.instance = ${days + 5}::text")}
    FROM delta AS d
    WHERE s.id = d.id AND NOT d.creates
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
        [d.first_seen_us for d in deltas],
        [d.last_seen_us for d in deltas],
        [d.frame_count for d in deltas],
        [d.creates for d in deltas],
        *([getattr(d, key) for d in deltas] for key in _NEWS),
        [k[0] for k in day_keys],
        [k[1] for k in day_keys],
        [k[2] for k in day_keys],
        [v[0] for v in day_values],
        [v[1] for v in day_values],
        instance,
        [d.finished_us for d in deltas],
    )


def apply(conn: Connection, index: IndexBatch, instance: str) -> set[str]:
    """Count, merge sessions and tally the day for one batch; returns the ids of its
    sessions that exist afterwards (their tasks may then be stored)."""
    result = conn.exec_driver_sql(STATEMENT, parameters(index, instance))
    return {row[0] for row in result}
