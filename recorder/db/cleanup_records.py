"""What the cleanup keeps besides the recordings: the audit trail of its runs, the
requests `recorder cleanup run` leaves for a running service, and pins.

Like :mod:`recorder.db.cleanup`: one short transaction per function, run by the
database process or, with no service running, by the CLI.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from recorder.db.schema import cleanup_requests, cleanup_runs, pins


def record_run(conn: Connection, run: dict[str, Any]) -> int:
    with conn.begin():
        result = conn.execute(insert(cleanup_runs).values(**run))
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def take_requests(conn: Connection, now_us: int) -> list[tuple[int, str | None, bool]]:
    """Requests from `recorder cleanup run`, marked taken."""
    with conn.begin():
        rows = conn.execute(
            select(cleanup_requests.c.id, cleanup_requests.c.policy, cleanup_requests.c.dry_run)
            .where(cleanup_requests.c.taken_us.is_(None))
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


def ask(conn: Connection, policy: str | None, dry_run: bool, now_us: int) -> int:
    """For the CLI: a request a running service will take."""
    with conn.begin():
        result = conn.execute(
            insert(cleanup_requests).values(
                policy=policy, dry_run=int(dry_run), requested_us=now_us
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
