"""A batch's index changes, a statement per change: all of them on SQLite, which
runs in-process and pays no round trip for each; on PostgreSQL the tasks and the
daemon's session lists (:mod:`recorder.db.pg_index` sends the rest as one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.engine import Connection

from recorder.db.backend import backend_of
from recorder.db.schema import active_session, connections, frame_days, sessions, tasks
from recorder.protocol.deltas import SessionDelta, TaskDelta, merged
from recorder.protocol.index import IndexBatch
from recorder.protocol.statuses import LOST_STATUS


def count_and_merge(conn: Connection, index: IndexBatch, instance: str) -> set[str]:
    """SQLite: what :func:`recorder.db.pg_index.apply` does, a statement per change
    (in-process, each costs no round trip); returns the ids of the batch's sessions
    that exist afterwards."""
    per_connection = index.connection_frames  # a property: summed on each access
    if per_connection:
        stmt = (
            update(connections)
            .where(connections.c.id == bind("cid"))
            .values(frame_count=connections.c.frame_count + bind("n"))
        )
        conn.execute(stmt, bound([{"cid": cid, "n": n} for cid, n in per_connection.items()]))
    known = merge_sessions(conn, index.sessions, instance) if index.sessions else set()
    days = index.days
    if days:
        count_days(conn, days)
    return known


def merge_sessions(conn: Connection, deltas: dict[str, SessionDelta], instance: str) -> set[str]:
    """Insert or update session rows; returns the ids that exist afterwards."""
    existing: dict[str, Any] = {}
    ids = list(deltas)
    for chunk in _chunks(ids, 500):
        result = conn.execute(select(sessions).where(sessions.c.id.in_(chunk)))
        existing.update({row.id: row._mapping for row in result})
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for sid, d in deltas.items():
        old = existing.get(sid)
        if old is None and not d.creates:
            continue  # only asked about, never shown to exist (see SessionDelta)
        # Another recorder's row (a shared PostgreSQL, an id both daemons use): our
        # frames count in it, our daemon's news does not change it.
        row = {"id": sid, **merged(old, d, own=old is None or old["instance"] == instance)}
        if old is None:
            inserts.append({**row, "instance": instance})
        else:
            updates.append(row)
    if inserts:
        conn.execute(sessions.insert(), inserts)
    if updates:
        conn.execute(
            update(sessions)
            .where(sessions.c.id == bind("id"))
            .values({k: bind(k) for k in updates[0] if k != "id"}),
            bound(updates),
        )
    return set(existing) | {row["id"] for row in inserts}


def count_days(conn: Connection, days: dict[tuple[int, str, str], list[int]]) -> None:
    insert = backend_of(conn).insert(frame_days)
    upsert = insert.on_conflict_do_update(
        index_elements=["day_us", "type", "direction"],
        set_={
            "frames": frame_days.c.frames + insert.excluded.frames,
            "bytes": frame_days.c.bytes + insert.excluded.bytes,
        },
    )
    conn.execute(
        upsert,
        [
            {"day_us": day, "type": type_, "direction": direction, "frames": n, "bytes": b}
            for (day, type_, direction), (n, b) in days.items()
        ],
    )


def merge_tasks(conn: Connection, deltas: dict[tuple[str, str], TaskDelta]) -> None:
    existing: dict[tuple[str, str], Any] = {}
    keys = list(deltas)
    for chunk in _chunks(keys, 300):
        result = conn.execute(
            select(tasks).where(tuple_(tasks.c.session_id, tasks.c.task_id).in_(chunk))
        )
        existing.update({(row.session_id, row.task_id): row._mapping for row in result})
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for (sid, tid), d in deltas.items():
        old = existing.get((sid, tid))
        row = {"session_id": sid, "task_id": tid, **merged(old, d)}
        if old is None:
            inserts.append(row)
        else:
            row["pk"] = old["id"]
            updates.append(row)
    if inserts:
        conn.execute(tasks.insert(), inserts)
    if updates:
        cols = [k for k in updates[0] if k not in ("pk", "session_id", "task_id")]
        conn.execute(
            update(tasks).where(tasks.c.id == bind("pk")).values({k: bind(k) for k in cols}),
            bound(updates),
        )


def reconcile(conn: Connection, at_us: int, listed: frozenset[str], instance: str) -> None:
    """Sessions we believe active that the daemon's list no longer names are lost.
    Only for the link's lists: a proxy may lead to another daemon
    (``proxy.upstream``), whose list cannot name ours (see :class:`Store`)."""
    result = conn.execute(
        select(sessions.c.id).where(
            active_session,
            sessions.c.last_seen_us < at_us,
            sessions.c.instance == instance,  # our daemon's list, our sessions
        )
    )
    gone = [sid for (sid,) in result if sid not in listed]
    for chunk in _chunks(gone, 500):
        conn.execute(
            update(sessions)
            .where(sessions.c.id.in_(chunk))
            .values(
                status=LOST_STATUS,
                last_error="no longer in the daemon's sessions_list",
                finished_us=at_us,
            )
        )


def bind(name: str) -> Any:
    # Bound names must differ from column names in UPDATE ... SET.
    return bindparam(f"b_{name}")


def bound(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{f"b_{k}": v for k, v in row.items()} for row in rows]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
