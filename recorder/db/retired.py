"""Ids SQLite must never hand out again.

SQLite gives a new row of an INTEGER PRIMARY KEY table one more than the largest
id the table holds: ``frames`` and ``connections`` have no AUTOINCREMENT (adding it
rebuilds a table, copying every frame at start-up). Once the newest rows are
deleted (a purge of the newest session), their ids would be handed out again, and
a reader that follows frames by id (``recorder tail``, a replay following a
session) and has seen them would skip what comes next.

So what deletes frames or connections retires the highest id it deleted
(:func:`retire`, in its own transaction), and the writer starts its next insert
above it (:func:`next_id`), looking only after a retirement in this process or
once when it starts: nothing per batch. PostgreSQL's sequences never reuse a
value (the backend says whether ids are reused); there both do nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Table, func, select
from sqlalchemy.engine import Connection

from recorder.db.backend import backend_of
from recorder.db.schema import retired_ids


class _Retirements:
    """How many times this process retired ids: a writer looks again when it grows."""

    count = 0


def retire(conn: Connection, table: Table, ids: Iterable[int]) -> None:
    """Rows of ``table`` with these ids are being deleted in ``conn``'s transaction:
    no later row of it may take any of them (SQLite; nothing on PostgreSQL)."""
    if not backend_of(conn).reuses_ids:
        return
    highest = max(ids, default=None)
    if highest is None:
        return
    insert = backend_of(conn).insert(retired_ids).values(table_name=table.name, highest=highest)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[retired_ids.c.table_name],
            set_={"highest": func.max(retired_ids.c.highest, insert.excluded.highest)},
        )
    )
    # Counted before the commit: a transaction that rolls back only makes the
    # writer look once more.
    _Retirements.count += 1


def retirements() -> int:
    """How many times this process retired ids: a writer that saw this number and
    looked (:func:`next_id`) need not look again until it changes."""
    return _Retirements.count


def next_id(conn: Connection, table: Table) -> int | None:
    """The id ``table``'s next row must take so that no retired id is handed out
    again, or None when SQLite's own choice (one above the largest) already is."""
    highest = conn.execute(
        select(retired_ids.c.highest).where(retired_ids.c.table_name == table.name)
    ).scalar()
    if highest is None:
        return None
    top = conn.execute(select(func.max(table.c.id))).scalar() or 0
    return int(highest) + 1 if highest > top else None
