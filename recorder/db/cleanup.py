"""The cleanup's database work on recordings: matching, purging, stop requests.

Synchronous functions of a SQLAlchemy Connection, one short transaction each, run
by the database process (through :mod:`recorder.pipeline.ops`) while the service
runs, or directly by the CLI when it does not. A purge is many calls of
:func:`purge_some`, each deleting a bounded number of frames, so that batches of
new frames are written in between: recording goes on during a large purge.
Compaction, in the same steps, is :mod:`recorder.db.compaction`. The
cleanup's own records (runs, requests, pins) are in :mod:`recorder.db.cleanup_records`;
the database's size and giving space back, in :mod:`recorder.db.space`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from recorder.db.reader import ACTIVE_SQL
from recorder.db.retired import retire
from recorder.db.schema import (
    cleanup_matches,
    cleanup_runs,
    connections,
    frame_days,
    frames,
    pins,
    sessions,
    tasks,
)
from recorder.protocol.index import DAY_US, TERMINAL_STATUSES
from recorder.protocol.policy import Decision, MatchState, SessionFacts

PURGING = "purging"
_FACTS = [sessions.c[name] for name in SessionFacts.__dataclass_fields__]


class StillActive(Exception):
    """Purge and compact never touch a session that is still running."""


def match_policy(
    conn: Connection,
    policy: str,
    now_us: int,
    decide: Callable[..., list[Decision]],
    remember: bool,
    instance: str,
    run_id: int | None = None,
) -> list[Decision]:
    """The policy's decisions now, over the sessions ``instance`` recorded (a recorder
    sharing a database stops, compacts and purges only its own); with ``remember``,
    note when each match began."""
    with conn.begin():
        mine = select(*_FACTS).where(sessions.c.instance == instance)
        facts = [SessionFacts.of(row._mapping) for row in conn.execute(mine)]
        pinned = frozenset(row[0] for row in conn.execute(select(pins.c.session_id)))
        m = cleanup_matches.c
        first = {
            row.session_id: MatchState(row.first_matched_us, row.attempts, row.retry_us)
            for row in conn.execute(
                select(m.session_id, m.first_matched_us, m.attempts, m.retry_us).where(
                    m.policy == policy
                )
            )
        }
        decisions = decide(facts, pinned=pinned, matched=first)
        if run_id is not None:
            conn.execute(
                update(cleanup_runs)
                .where(cleanup_runs.c.id == run_id)
                .values(matched=len(decisions))
            )
        if remember:
            matched = {d.session_id for d in decisions}
            new = [
                {"policy": policy, "session_id": sid, "first_matched_us": now_us}
                for sid in matched - set(first)
            ]
            if new:
                conn.execute(insert(cleanup_matches), new)
            gone = sorted(set(first) - matched)
            for start in range(0, len(gone), 500):
                conn.execute(
                    delete(cleanup_matches).where(
                        cleanup_matches.c.policy == policy,
                        cleanup_matches.c.session_id.in_(gone[start : start + 500]),
                    )
                )
    return decisions


def note_stop(
    conn: Connection, policy: str, session_id: str, now_us: int, delays: Sequence[float]
) -> int:
    """A stop_session request went to the daemon: count it, and say when the next may
    go if the session goes on matching (``delays[n - 1]`` after the n-th). Returns the
    requests sent so far."""
    m = cleanup_matches.c
    where = (m.policy == policy, m.session_id == session_id)
    with conn.begin():
        attempts = (conn.execute(select(m.attempts).where(*where)).scalar() or 0) + 1
        retry = now_us + int(delays[min(attempts, len(delays)) - 1] * 1e6)
        conn.execute(
            update(cleanup_matches).where(*where).values(attempts=attempts, retry_us=retry)
        )
    return attempts


def progress(conn: Connection, run_id: int | None, frames: int, now_us: int) -> None:
    """A step's share of its run's audit row, in the step's own transaction: a run
    killed after it still says what it had done."""
    if run_id is not None:
        conn.execute(
            update(cleanup_runs)
            .where(cleanup_runs.c.id == run_id)
            .values(frames=cleanup_runs.c.frames + frames, ended_us=now_us)
        )


def require_finished(conn: Connection, session_id: str) -> None:
    status = conn.execute(select(sessions.c.status).where(sessions.c.id == session_id)).scalar()
    if status is not None and status not in TERMINAL_STATUSES:
        raise StillActive(f"session {session_id} is {status}")


def uncount(conn: Connection, rows: Sequence[Any]) -> None:
    """Take deleted frames out of the rollups: per connection, session and day."""
    per_connection: dict[int, int] = {}
    per_day: dict[tuple[int, str, str], list[int]] = {}
    for row in rows:
        per_connection[row.connection_id] = per_connection.get(row.connection_id, 0) + 1
        key = (row.received_at_us - row.received_at_us % DAY_US, row.type or "", row.direction)
        tally = per_day.setdefault(key, [0, 0])
        tally[0] += 1
        tally[1] += row.size
    for cid, n in per_connection.items():
        conn.execute(
            update(connections)
            .where(connections.c.id == cid)
            .values(frame_count=connections.c.frame_count - n)
        )
    for (day, type_, direction), (n, size) in per_day.items():
        conn.execute(
            update(frame_days)
            .where(
                frame_days.c.day_us == day,
                frame_days.c.type == type_,
                frame_days.c.direction == direction,
            )
            .values(frames=frame_days.c.frames - n, bytes=frame_days.c.bytes - size)
        )


def _forget(conn: Connection, session_ids: Sequence[str]) -> None:
    """The index rows of sessions whose frames are gone."""
    for start in range(0, len(session_ids), 500):
        chunk = session_ids[start : start + 500]
        conn.execute(delete(tasks).where(tasks.c.session_id.in_(chunk)))
        conn.execute(delete(cleanup_matches).where(cleanup_matches.c.session_id.in_(chunk)))
        conn.execute(delete(sessions).where(sessions.c.id.in_(chunk)))


CHUNK_COLUMNS = (
    frames.c.id,
    frames.c.connection_id,
    frames.c.received_at_us,
    frames.c.type,
    frames.c.direction,
    frames.c.size,
)


def purge_some(
    conn: Connection, session_id: str, limit: int, run_id: int | None, now_us: int
) -> tuple[int, int, list[int]]:
    """Delete up to ``limit`` of a finished session's frames: how many were deleted,
    their payload bytes, and the connections they were on. The session is marked as
    being purged until :func:`purge_finish` removes it."""
    with conn.begin():
        require_finished(conn, session_id)
        rows = conn.execute(
            select(*CHUNK_COLUMNS)
            .where(frames.c.session_id == session_id)
            .order_by(frames.c.id)
            .limit(limit)
        ).all()
        if not rows:
            return 0, 0, []
        retire(conn, frames, [r.id for r in rows])
        conn.execute(delete(frames).where(frames.c.id.in_([r.id for r in rows])))
        uncount(conn, rows)
        conn.execute(
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(frame_count=sessions.c.frame_count - len(rows), cleanup_state=PURGING)
        )
        progress(conn, run_id, len(rows), now_us)
        return len(rows), sum(r.size for r in rows), sorted({r.connection_id for r in rows})


def purge_finish(
    conn: Connection, session_id: str, connection_ids: Iterable[int], run_id: int | None
) -> int:
    """After its frames: the session's index rows, and the closed connections it
    emptied. Returns how many connection rows went."""
    with conn.begin():
        require_finished(conn, session_id)
        _forget(conn, [session_id])
        if run_id is not None:
            conn.execute(
                update(cleanup_runs)
                .where(cleanup_runs.c.id == run_id)
                .values(acted=cleanup_runs.c.acted + 1)
            )
        ids = sorted(set(connection_ids))
        if not ids:
            return 0
        retire(conn, connections, ids)
        result = conn.execute(
            delete(connections).where(
                connections.c.id.in_(ids),
                connections.c.closed_at_us.is_not(None),
                connections.c.frame_count <= 0,
            )
        )
        return int(result.rowcount)


def oldest_finished(conn: Connection, limit: int) -> list[SessionFacts]:
    """For ``storage.max_db_size``: finished, unpinned sessions, oldest first."""
    with conn.begin():
        rows = conn.execute(
            select(*_FACTS)
            .where(sessions.c.status.in_(sorted(TERMINAL_STATUSES)))
            .where(sessions.c.id.not_in(select(pins.c.session_id)))
            # When the recorder saw them end: a daemon's endedAt does not decide.
            .order_by(func.coalesce(sessions.c.finished_us, sessions.c.last_seen_us), sessions.c.id)
            .limit(limit)
        ).all()
    return [SessionFacts.of(row._mapping) for row in rows]


def drop_due_partitions(conn: Connection, before_us: int) -> list[tuple[str, int]]:
    """PostgreSQL retention: each monthly partition of frames that ends before
    ``before_us`` goes whole (DROP TABLE, no row-by-row delete), unless it holds frames
    of a session that is active, pinned, or ended after ``before_us`` (a session that
    began in an old month and ended yesterday is not due). The rollups lose what it held; sessions and
    closed connections left with no frame go too. Returns (partition, frames)."""
    from sqlalchemy import text

    from recorder.db import partitions

    dropped = []
    with conn.begin():
        due = partitions.due(conn, before_us)
    for name in due:
        with conn.begin():
            keep = conn.execute(
                text(
                    f'SELECT 1 FROM "{name}" WHERE session_id IN ('
                    f"SELECT id FROM sessions WHERE {ACTIVE_SQL} OR finished_us >= :before"
                    " UNION SELECT session_id FROM pins) LIMIT 1"
                ),
                {"before": before_us},
            ).first()
            if keep is not None:
                continue  # row by row, later, for what may go
            per_connection = conn.execute(
                text(f'SELECT connection_id, count(*) FROM "{name}" GROUP BY 1')
            ).all()
            per_session = conn.execute(
                text(
                    f'SELECT session_id, count(*) FROM "{name}" WHERE session_id IS NOT NULL GROUP BY 1'
                )
            ).all()
            year, month = int(name[7:11]), int(name[12:14])
            start = partitions.month_start(year, month)
            end = partitions.month_start(year + (month == 12), 1 if month == 12 else month + 1)
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
            conn.execute(
                delete(frame_days).where(frame_days.c.day_us >= start, frame_days.c.day_us < end)
            )
            emptied = [
                sid
                for (sid,) in conn.execute(
                    select(sessions.c.id).where(
                        sessions.c.frame_count <= 0,
                        sessions.c.status.in_(sorted(TERMINAL_STATUSES)),
                        sessions.c.id.not_in(select(pins.c.session_id)),
                    )
                )
            ]
            _forget(conn, emptied)
            # Only the closed connections this month emptied: not other instances'
            # rows, nor connections that never carried a frame.
            conn.execute(
                delete(connections).where(
                    connections.c.id.in_([cid for cid, _ in per_connection]),
                    connections.c.closed_at_us.is_not(None),
                    connections.c.frame_count <= 0,
                )
            )
            dropped.append((name, sum(n for _, n in per_connection)))
    return dropped
