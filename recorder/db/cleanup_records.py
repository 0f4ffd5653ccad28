"""What the cleanup keeps besides the recordings: the audit trail of its runs, the
requests `recorder cleanup run` leaves for a running service, and pins.

The writes are like :mod:`recorder.db.cleanup`'s: one short transaction per
function, run by the database process or, with no service running, by the CLI.
The reads at the end are the CLI's, on a read-only :class:`Reader`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from recorder.db.readonly import Reader, Row, first_row
from recorder.db.schema import cleanup_requests, cleanup_runs, pins
from recorder.protocol.policy import MatchState, SessionFacts

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


def runs(
    reader: Reader, *, ids: Iterable[int] | None = None, policy: str | None = None, limit: int = 0
) -> list[Row]:
    """Cleanup runs: those of ``ids`` in order, or the newest first (of ``policy``)."""
    if ids is not None:
        listed = ", ".join(str(int(i)) for i in ids) or "0"
        return reader.rows(f"SELECT * FROM cleanup_runs WHERE id IN ({listed}) ORDER BY id")
    where = " WHERE policy = :p" if policy else ""
    limit_sql = f" LIMIT {int(limit)}" if limit else ""
    return reader.rows(
        f"SELECT * FROM cleanup_runs{where} ORDER BY id DESC{limit_sql}", {"p": policy}
    )


def cut_short(row: Row) -> dict[str, Any]:
    """A run row marked running that no recorder is running, as what it is."""
    return {**dict(row), "state": INTERRUPTED}


def answer(reader: Reader, request_id: int) -> str | None:
    """The service's answer to a request (JSON), once it has given one."""
    row = first_row(
        reader,
        "SELECT result FROM cleanup_requests WHERE id = :id AND done_us IS NOT NULL",
        {"id": request_id},
    )
    return None if row is None else str(row["result"])


def decision_inputs(
    reader: Reader, policy_names: Iterable[str], instance: str
) -> tuple[list[SessionFacts], frozenset[str], dict[str, dict[str, MatchState]]]:
    """What :func:`recorder.cleanup.policy.decide` needs, read without writing: the
    facts of the sessions ``instance`` recorded, the pinned ids, and per policy when
    each match began."""
    # Filtered here, not in SQL: a copy made before migration 0007 has no instance
    # column, and all its sessions are then anyone's, as they were.
    facts = [
        SessionFacts.of(row)
        for row in reader.rows("SELECT * FROM sessions")
        if ("instance" not in row.keys() or row["instance"] == instance)
    ]
    pinned = frozenset(r["session_id"] for r in reader.rows("SELECT session_id FROM pins"))
    first = {
        name: {
            r["session_id"]: MatchState(
                r["first_matched_us"],
                # A copy made before migration 0011 counts no stop requests.
                r["attempts"] if "attempts" in r.keys() else 0,
                r["retry_us"] if "retry_us" in r.keys() else None,
            )
            for r in reader.rows("SELECT * FROM cleanup_matches WHERE policy = :p", {"p": name})
        }
        for name in policy_names
    }
    return facts, pinned, first
