"""What the cleanup keeps besides the recordings: the audit trail of its runs, the
requests `recorder cleanup run` leaves for a running service, and pins.

The writes are like :mod:`recorder.db.cleanup`'s: one short transaction per
function, run by the database process or, with no service running, by the CLI.
What a front end reads of them is the read library's
(:class:`recorder.db.recordings.Recordings`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from recorder.db.schema import cleanup_requests, cleanup_runs, pins

RUNNING, DONE, INTERRUPTED = "running", "done", "interrupted"


def end_interrupted(conn: Connection, instance: str, alive: Iterable[int]) -> int:
    """Runs of ``instance`` still marked running but not ``alive`` (in this process)
    were cut short by a stop or a kill: marked interrupted, with what they had done
    (their frames, counted step by step). Returns how many."""
    with conn.begin():
        result = conn.execute(
            update(cleanup_runs)
            .where(
                cleanup_runs.c.instance == instance,
                cleanup_runs.c.state == RUNNING,
                cleanup_runs.c.id.not_in(list(alive)),
            )
            .values(state=INTERRUPTED)
        )
    return int(result.rowcount)


def start_run(conn: Connection, run: dict[str, Any], alive: Iterable[int]) -> tuple[int, int]:
    """A run's audit row, written before it acts (state "running"), and the newest
    frame's id then; runs that are not ``alive`` are ended first (:func:`end_interrupted`)."""
    from sqlalchemy import func

    from recorder.db.schema import frames

    end_interrupted(conn, run["instance"], alive)
    with conn.begin():
        result = conn.execute(insert(cleanup_runs).values(**run, state=RUNNING))
        newest = conn.execute(select(func.max(frames.c.id))).scalar()
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0]), int(newest or 0)


def finish_run(conn: Connection, run_id: int, values: dict[str, Any]) -> None:
    """The run's outcome; the frames its steps counted stay as they counted them."""
    with conn.begin():
        conn.execute(
            update(cleanup_runs).where(cleanup_runs.c.id == run_id).values(**values, state=DONE)
        )


def take_requests(
    conn: Connection, now_us: int, instance: str
) -> list[tuple[int, str | None, bool]]:
    """Requests from `recorder cleanup run` to ``instance``, marked taken."""
    with conn.begin():
        rows = conn.execute(
            select(cleanup_requests.c.id, cleanup_requests.c.policy, cleanup_requests.c.dry_run)
            .where(cleanup_requests.c.taken_us.is_(None), cleanup_requests.c.instance == instance)
            .order_by(cleanup_requests.c.id)
        ).all()
        if rows:
            conn.execute(
                update(cleanup_requests)
                .where(cleanup_requests.c.id.in_([r.id for r in rows]))
                .values(taken_us=now_us)
            )
    return [(r.id, r.policy, bool(r.dry_run)) for r in rows]


def answer_request(conn: Connection, request_id: int, now_us: int, result: str) -> None:
    with conn.begin():
        conn.execute(
            update(cleanup_requests)
            .where(cleanup_requests.c.id == request_id)
            .values(done_us=now_us, result=result)
        )


def ask(conn: Connection, policy: str | None, dry_run: bool, now_us: int, instance: str) -> int:
    """For the CLI: a request the running service named ``instance`` will take."""
    with conn.begin():
        result = conn.execute(
            insert(cleanup_requests).values(
                policy=policy, dry_run=int(dry_run), requested_us=now_us, instance=instance
            )
        )
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def pin(conn: Connection, session_id: str, now_us: int, on: bool) -> bool:
    """Pin (or unpin) a session; False when it already was (or was not) pinned."""
    with conn.begin():
        exists = conn.execute(
            select(pins.c.session_id).where(pins.c.session_id == session_id)
        ).first()
        if on and exists is None:
            conn.execute(insert(pins).values(session_id=session_id, pinned_at_us=now_us))
            return True
        if not on and exists is not None:
            conn.execute(delete(pins).where(pins.c.session_id == session_id))
            return True
        return False
