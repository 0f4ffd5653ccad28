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
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from recorder.db.retired import retire
from recorder.db.schema import (
    alert_deliveries,
    alert_targets,
    alerts,
    cleanup_matches,
    cleanup_runs,
    connections,
    frame_days,
    frames,
    otel_exports,
    pins,
    sessions,
    tasks,
)
from recorder.protocol.index import DAY_US
from recorder.protocol.policy import Conditions, Decision, MatchState, SessionFacts
from recorder.protocol.statuses import TERMINAL_STATUSES

PURGING = "purging"
_FACTS = [sessions.c[name] for name in SessionFacts.__dataclass_fields__]


class StillActive(Exception):
    """Purge and compact never touch a session that is still running."""


class Busy(Exception):
    """Another run, still running, holds the session (a purge or a compaction)."""


@dataclass(frozen=True, slots=True)
class Work:
    """One run's work on one session: the run that holds it (``sessions.cleanup_state``
    names it), and the newest frame the run may touch: frames recorded after it began
    are the next run's, so a session that goes on streaming cannot keep a run going."""

    session_id: str
    run_id: int | None
    through_id: int


def hold(conn: Connection, work: Work, verb: str) -> None:
    """In a step's transaction: the session is finished and this run holds it (taken
    over from a run that is no longer running, as after a kill); else StillActive or
    Busy. Two runs (two CLIs, a CLI and a service starting) never interleave steps on
    one session."""
    found = conn.execute(
        select(sessions.c.status, sessions.c.cleanup_state).where(sessions.c.id == work.session_id)
    ).first()
    if found is None:
        return  # purged already: the step finds nothing
    status, state = found
    if status is not None and status not in TERMINAL_STATUSES:
        raise StillActive(f"session {work.session_id} is {status}")
    mine = f"{verb} {work.run_id or 0}"
    if state == mine:
        return
    holder = _holder(state)
    if holder is not None and holder != (work.run_id or 0):
        running = conn.execute(
            select(cleanup_runs.c.id).where(
                cleanup_runs.c.id == holder, cleanup_runs.c.state == "running"
            )
        ).first()
        if running is not None:
            raise Busy(f"run {holder} is working on it")
    conn.execute(
        update(sessions).where(sessions.c.id == work.session_id).values(cleanup_state=mine)
    )


def _holder(state: str | None) -> int | None:
    """The run a cleanup_state names ("purging 12"); None for none (or unreadable)."""
    _, _, number = (state or "").partition(" ")
    return int(number) if number.isdigit() else None


def release(conn: Connection, work: Work, verb: str) -> None:
    """The run is done with the session: its mark goes (unless another run's)."""
    conn.execute(
        update(sessions)
        .where(
            sessions.c.id == work.session_id,
            sessions.c.cleanup_state == f"{verb} {work.run_id or 0}",
        )
        .values(cleanup_state=None)
    )


def match_policy(
    conn: Connection,
    policy: str,
    conditions: Conditions,
    now_us: int,
    decide: Callable[..., list[Decision]],
    remember: bool,
    instance: str,
    run_id: int | None = None,
) -> list[Decision]:
    """The policy's decisions now, over the sessions ``instance`` recorded (a recorder
    sharing a database stops, compacts and purges only its own); with ``remember``,
    note when each match began. Only the sessions the conditions can match are read
    (:func:`candidates`): the writer is not held for every session of a large database."""
    with conn.begin():
        mine = select(*_FACTS).where(
            sessions.c.instance == instance, *candidates(conditions, now_us)
        )
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
            # A stop's attempts outlive a match that comes and goes (its own request made
            # the session look busy for a moment): the backoff is not started over.
            gone = sorted(sid for sid in set(first) - matched if not first[sid].attempts)
            for start in range(0, len(gone), 500):
                conn.execute(
                    delete(cleanup_matches).where(
                        cleanup_matches.c.policy == policy,
                        cleanup_matches.c.session_id.in_(gone[start : start + 500]),
                    )
                )
    return decisions


def candidates(c: Conditions, now_us: int) -> list[Any]:
    """SQL conditions a session must meet to be matched by ``c``, the ones an index or a
    plain comparison decides; :func:`recorder.protocol.policy.matches` has the last word."""
    s = sessions.c
    found: list[Any] = []
    if c.status is not None:
        found.append(s.status.in_(list(c.status)))
    if c.ended_before is not None:
        found.append(s.status.in_(sorted(TERMINAL_STATUSES)))
        ended = func.coalesce(s.finished_us, s.last_seen_us)
        found.append(ended <= now_us - int(c.ended_before * 1e6))
    if c.started_before is not None:
        found.append(s.first_seen_us <= now_us - int(c.started_before * 1e6))
    if c.idle_for is not None:
        active = func.coalesce(s.active_us, s.last_seen_us)
        found.append(active <= now_us - int(c.idle_for * 1e6))
    if c.orchestrator_id is not None:
        found.append(s.orchestrator_id == c.orchestrator_id)
    if c.session_type is not None:
        found.append(s.session_type == c.session_type)
    if c.min_frames is not None:
        found.append(s.frame_count >= c.min_frames)
    if c.max_frames is not None:
        found.append(s.frame_count <= c.max_frames)
    return found


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


def uncount(conn: Connection, rows: Sequence[Any], session_id: str) -> None:
    """Take a session's deleted frames out of the rollups: per connection, task and day
    (the session's own count is its caller's)."""
    per_connection: dict[int, int] = {}
    per_task: dict[str, int] = {}
    per_day: dict[tuple[int, str, str], list[int]] = {}
    for row in rows:
        per_connection[row.connection_id] = per_connection.get(row.connection_id, 0) + 1
        if row.task_id is not None:
            per_task[row.task_id] = per_task.get(row.task_id, 0) + 1
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
    for task_id, n in per_task.items():
        conn.execute(
            update(tasks)
            .where(tasks.c.session_id == session_id, tasks.c.task_id == task_id)
            .values(frame_count=tasks.c.frame_count - n)
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


def forget(conn: Connection, session_ids: Sequence[str]) -> None:
    """The index rows of sessions whose frames are gone, their delivered alerts (one
    still due to a target stays, to be delivered), and their export cursor rows."""
    for start in range(0, len(session_ids), 500):
        chunk = session_ids[start : start + 500]
        conn.execute(delete(tasks).where(tasks.c.session_id.in_(chunk)))
        conn.execute(delete(cleanup_matches).where(cleanup_matches.c.session_id.in_(chunk)))
        conn.execute(delete(sessions).where(sessions.c.id.in_(chunk)))
        _forget_alerts(conn, chunk)
        conn.execute(delete(otel_exports).where(otel_exports.c.session_id.in_(chunk)))


def _forget_alerts(conn: Connection, session_ids: Sequence[str]) -> None:
    # Through the partial index of what is due: few rows, whatever the outbox holds.
    due = select(alert_targets.c.alert_id).where(alert_targets.c.next_us.is_not(None))
    found = select(alerts.c.id).where(alerts.c.session_id.in_(session_ids), alerts.c.id.not_in(due))
    ids = [r[0] for r in conn.execute(found)]
    if not ids:
        return
    conn.execute(delete(alert_deliveries).where(alert_deliveries.c.alert_id.in_(ids)))
    conn.execute(delete(alert_targets).where(alert_targets.c.alert_id.in_(ids)))
    conn.execute(delete(alerts).where(alerts.c.id.in_(ids)))


# What a purge or compaction step reads of a frame: enough to take it out of the
# rollups (connection, task, day, type, direction), never its payload.
CHUNK_COLUMNS = (
    frames.c.id,
    frames.c.connection_id,
    frames.c.seq,
    frames.c.received_at_us,
    frames.c.type,
    frames.c.direction,
    frames.c.size,
    frames.c.task_id,
)


def purge_some(conn: Connection, work: Work, limit: int, now_us: int) -> tuple[int, int, list[int]]:
    """Delete up to ``limit`` of a finished session's frames (those recorded before the
    run began): how many were deleted, their payload bytes, and the connections they
    were on. The session is held for the run until :func:`purge_finish`."""
    with conn.begin():
        hold(conn, work, PURGING)
        rows = conn.execute(
            select(*CHUNK_COLUMNS)
            .where(frames.c.session_id == work.session_id, frames.c.id <= work.through_id)
            .order_by(frames.c.id)
            .limit(limit)
        ).all()
        if not rows:
            return 0, 0, []
        retire(conn, frames, [r.id for r in rows])
        conn.execute(delete(frames).where(frames.c.id.in_([r.id for r in rows])))
        uncount(conn, rows, work.session_id)
        conn.execute(
            update(sessions)
            .where(sessions.c.id == work.session_id)
            .values(frame_count=sessions.c.frame_count - len(rows))
        )
        progress(conn, work.run_id, len(rows), now_us)
        return len(rows), sum(r.size for r in rows), sorted({r.connection_id for r in rows})


def purge_finish(conn: Connection, work: Work, connection_ids: Iterable[int]) -> int:
    """After its frames: the session's index rows, and the closed connections it
    emptied. Returns how many connection rows went. A session that received frames
    after the run began keeps its row (and its mark) for the next run: those frames
    are not left without their session."""
    with conn.begin():
        hold(conn, work, PURGING)
        if work.run_id is not None:
            conn.execute(
                update(cleanup_runs)
                .where(cleanup_runs.c.id == work.run_id)
                .values(acted=cleanup_runs.c.acted + 1)
            )
        later = conn.execute(
            select(frames.c.id).where(frames.c.session_id == work.session_id).limit(1)
        ).first()
        if later is None:
            forget(conn, [work.session_id])
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


def oldest_finished(conn: Connection, limit: int, instance: str) -> list[SessionFacts]:
    """For ``storage.max_db_size``: finished, unpinned sessions ``instance`` recorded,
    oldest first (a recorder sharing a database purges only its own)."""
    with conn.begin():
        rows = conn.execute(
            select(*_FACTS)
            .where(sessions.c.instance == instance)
            .where(sessions.c.status.in_(sorted(TERMINAL_STATUSES)))
            .where(sessions.c.id.not_in(select(pins.c.session_id)))
            # When the recorder saw them end: a daemon's endedAt does not decide.
            .order_by(func.coalesce(sessions.c.finished_us, sessions.c.last_seen_us), sessions.c.id)
            .limit(limit)
        ).all()
    return [SessionFacts.of(row._mapping) for row in rows]
