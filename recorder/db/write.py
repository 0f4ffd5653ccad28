"""The write side: the statements the database process runs, one transaction each.

Only the database process uses :class:`Store`, through a :class:`WriterDatabase`
(see :mod:`recorder.db.connection`). Frames go in by the hundreds per statement on
SQLite (multi-row INSERTs compiled once by SQLAlchemy Core) and by one binary COPY
per transaction on PostgreSQL. A batch's index changes are a statement per change
on SQLite, which pays no round trip for them (:mod:`recorder.db.index_statements`),
and one statement on PostgreSQL (:mod:`recorder.db.pg_index`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from itertools import chain
from typing import Any, Final

from sqlalchemy import func, literal_column, select, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.elements import ColumnElement

from recorder.db import index_statements, pg_index, retired
from recorder.db.backend import backend_of_dialect
from recorder.db.index_statements import bind, bound
from recorder.db.schema import active_session, connections, frames, sessions
from recorder.protocol.index import IndexBatch

FRAME_COLUMNS = (
    "connection_id",
    "seq",
    "direction",
    "received_at_us",
    "monotonic_ns",
    "opcode",
    "size",
    "type",
    "session_id",
    "task_id",
    "parse_error",
    "payload",
    "payload_bytes",
)
FrameRow = tuple[
    int,
    int,
    str,
    int,
    int,
    int,
    int,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    bytes | None,
]
# Written into the SQL, not bound: PostgreSQL's index by type is partial (it leaves
# out stream_chunk), and a cached plan for a bound type could not use it.
SPAWN_TYPE: ColumnElement[str] = literal_column("'spawn_session'")
# spawn_session rows whose ids the writer keeps until their session is announced;
# beyond this the oldest are forgotten (their attribution then searches for them).
SPAWNS_REMEMBERED = 10_000
# Positions in a FrameRow (a tuple: the hot path builds millions), by name.
ROW_CONNECTION: Final = 0
ROW_SEQ: Final = 1
ROW_RECEIVED: Final = 3
ROW_SIZE: Final = 6
ROW_TYPE: Final = 7
ROW_TASK: Final = 9
assert [FRAME_COLUMNS[i] for i in (ROW_CONNECTION, ROW_SEQ, ROW_RECEIVED, ROW_SIZE)] == [
    "connection_id",
    "seq",
    "received_at_us",
    "size",
]
assert FRAME_COLUMNS[ROW_TYPE : ROW_TASK + 1] == ("type", "session_id", "task_id")


def unindexed(rows: Sequence[FrameRow]) -> list[FrameRow]:
    """The rows without what classification read from them (type, session, task)."""
    return [(*row[:7], None, None, None, *row[10:]) for row in rows]  # ROW_TYPE..ROW_TASK


# 13 parameters a row: 6500 a statement, under SQLite's limit of 32766 bound
# parameters (999 before SQLite 3.32, 2020).
SQLITE_ROWS_PER_INSERT = (
    500 if sqlite3.sqlite_version_info >= (3, 32) else 999 // len(FRAME_COLUMNS)
)


class Store:
    """The writer's statements, as synchronous functions of a SQLAlchemy Connection.

    Written once, run two ways (see :class:`WriterDatabase`): on SQLite a whole
    batch runs in one call on the writer's database thread, with no trip back to
    the event loop between statements; on PostgreSQL through
    ``AsyncConnection.run_sync`` over asyncpg. Each method is one transaction.
    """

    def __init__(self, dialect: Dialect, instance: str = "default") -> None:
        self.instance = instance
        compiled = frames.insert().compile(dialect=dialect, column_keys=list(FRAME_COLUMNS))
        # Map the compiled statement's parameter order onto our row tuples.
        order = compiled.positiontup or list(FRAME_COLUMNS)
        if list(order) != list(FRAME_COLUMNS):
            raise RuntimeError(f"unexpected parameter order {order}")
        self._insert_sql = str(compiled)
        backend = backend_of_dialect(dialect)
        # How a batch goes in: with COPY and one statement of index changes (a
        # server, where each statement is a round trip), or statement by statement.
        self._server = backend.server
        self._reuses_ids = backend.reuses_ids
        self._multirow_sql: dict[int, str] = {}
        # Batches written with COPY (PostgreSQL), for tests and metrics.
        self.copies = 0
        # Frames received before this have a monthly partition to go to (PostgreSQL).
        self._partitions_until = 0
        # spawn_session rows waiting for their session: (connection id, seq) -> frame id.
        self._spawn_ids: dict[tuple[int, int], int] = {}
        # The role of each connection this Store opened and has not closed; others
        # (opened before a restart) are read from their rows when a listing needs it.
        self._roles: dict[int, str] = {}
        # SQLite: retired.retirements() when this Store last made sure its next frame
        # takes an id never seen before (None: not yet).
        self._retired_seen: int | None = None

    def open_connection(
        self, conn: Connection, role: str, url: str, opened_us: int, client_addr: str | None = None
    ) -> int:
        values = {
            "role": role,
            "url": url,
            "opened_at_us": opened_us,
            "client_addr": client_addr,
            "frame_count": 0,
            "instance": self.instance,
        }
        with conn.begin():
            # Readers tell connections apart by id: never one a purge removed.
            start = retired.next_id(conn, connections) if self._reuses_ids else None
            if start is not None:
                values["id"] = start
            result = conn.execute(connections.insert().values(values))
        pk = result.inserted_primary_key
        assert pk is not None
        self._roles[int(pk[0])] = role
        return int(pk[0])

    def close_connection(
        self,
        conn: Connection,
        connection_id: int,
        closed_us: int,
        *,
        code: int | None,
        reason: str | None,
        closed_by: str | None,
        error: str | None,
    ) -> None:
        self._roles.pop(connection_id, None)
        with conn.begin():
            conn.execute(
                update(connections)
                .where(connections.c.id == connection_id)
                .values(
                    closed_at_us=closed_us,
                    close_code=code,
                    close_reason=reason,
                    closed_by=closed_by,
                    error=error,
                )
            )

    def close_dangling(self, conn: Connection, now_us: int) -> int:
        """Connections left open by a service that died: mark them closed by the service."""
        with conn.begin():
            result = conn.execute(
                update(connections)
                .where(
                    connections.c.closed_at_us.is_(None), connections.c.instance == self.instance
                )
                .values(
                    closed_at_us=now_us, closed_by="service", error="recorder stopped uncleanly"
                )
            )
        return int(result.rowcount)

    def active_session_ids(self, conn: Connection) -> list[str]:
        with conn.begin():
            result = conn.execute(
                select(sessions.c.id)
                .where(active_session, sessions.c.instance == self.instance)
                .order_by(sessions.c.last_seen_us.desc())
            )
            return [row[0] for row in result]

    def write_batch(self, conn: Connection, rows: Sequence[FrameRow], index: IndexBatch) -> None:
        self.write_batches(conn, [(rows, index)])

    def write_batches(
        self, conn: Connection, batches: Sequence[tuple[Sequence[FrameRow], IndexBatch]]
    ) -> None:
        """Consecutive batches in one transaction: each batch's index changes in order,
        as if each had been written alone, then their frames in one COPY (or multi-row
        inserts). A COPY and a commit cost about as much for 2000 rows as for several
        times that: batches that queue up while one is written go in together.

        The index changes come first: on PostgreSQL their statement opens the
        transaction that the COPY then joins. Only attributions read or change frame
        rows, so they come after the frames."""
        rows = batches[0][0] if len(batches) == 1 else [r for part, _ in batches for r in part]
        spawns = any(index.spawns for _, index in batches)
        retirements = retired.retirements()
        with conn.begin():
            for _, index in batches:
                self._apply_index(conn, index)
            before = conn.execute(select(func.max(frames.c.id))).scalar() if spawns else None
            if not rows:
                pass
            elif self._server:
                self._copy(conn, rows)
            else:
                self._insert_multirow(conn, rows, retirements != self._retired_seen)
            if spawns:
                self._note_spawns(conn, before or 0)
            for _, index in batches:
                if index.attributions:
                    self._attribute(conn, index.attributions)
            raised = [a for _, index in batches for a in index.alerts]
            if raised:
                self._store_alerts(conn, raised)
        if rows and self._reuses_ids:
            # Committed: the frames start above every retired id, until the next purge.
            self._retired_seen = retirements

    def _store_alerts(self, conn: Connection, raised: list[Any]) -> None:
        """The alerts the batches' frames raised, in their transaction: no crash keeps
        a frame and loses its alert (recorder.db.alerts)."""
        from recorder.db.alerts import insert_alerts, raised_alerts
        from recorder.times import now_us

        insert_alerts(conn, raised_alerts(raised), self.instance, now_us())

    def holds(
        self, conn: Connection, batches: Sequence[tuple[Sequence[FrameRow], IndexBatch]]
    ) -> bool:
        """Whether these batches are stored already. A connection that drops during a
        commit leaves it unknown whether the commit went through; the batches were one
        transaction, so their first frame tells (found by receive time, indexed)."""
        first = next((rows[0] for rows, _ in batches if rows), None)
        if first is None:
            return False
        with conn.begin():
            found = conn.execute(
                select(frames.c.id)
                .where(
                    frames.c.received_at_us == first[ROW_RECEIVED],
                    frames.c.connection_id == first[ROW_CONNECTION],
                    frames.c.seq == first[ROW_SEQ],
                )
                .limit(1)
            ).first()
        return found is not None

    def _note_spawns(self, conn: Connection, before: int) -> None:
        """The ids of the spawn requests just stored, found through the (type, id) index."""
        found = conn.execute(
            select(frames.c.id, frames.c.connection_id, frames.c.seq).where(
                frames.c.type == SPAWN_TYPE, frames.c.id > before
            )
        )
        for fid, cid, seq in found:
            self._spawn_ids[(cid, seq)] = fid
        while len(self._spawn_ids) > SPAWNS_REMEMBERED:
            del self._spawn_ids[next(iter(self._spawn_ids))]

    def _copy(self, conn: Connection, rows: Sequence[FrameRow]) -> None:
        """PostgreSQL: the batch in one binary COPY, in the batch's transaction.

        asyncpg's copy_records_to_table sends the rows in PostgreSQL's binary format,
        with none of the per-row work of an INSERT (measured: about 4 times the rate
        of executemany). It is a coroutine: inside the synchronous Store code,
        SQLAlchemy's greenlet bridge (``await_``) runs it on the same connection.
        """
        from sqlalchemy.util.concurrency import await_

        # The index statement that ran first began the adapter's transaction (it
        # begins with its first statement): the COPY is inside it.
        newest = rows[-1][ROW_RECEIVED]
        if newest >= self._partitions_until:
            # Partitions ahead of the frames, made in the batch's transaction.
            from recorder.db import partitions

            partitions.ensure(conn, newest)
            self._partitions_until = partitions.months(newest, 2)[-1].start
        driver = conn.connection.driver_connection
        assert driver is not None
        await_(driver.copy_records_to_table("frames", records=rows, columns=FRAME_COLUMNS))
        self.copies += 1

    def _insert_multirow(self, conn: Connection, rows: Sequence[FrameRow], look: bool) -> None:
        """SQLite: hundreds of rows per ``INSERT ... VALUES (...), (...), ...``.

        Python's sqlite3 executemany steps each row separately and takes the GIL
        back every time; one multi-row statement does all its B-tree work in one
        step without the GIL, in parallel with the writer classifying the next
        batch. Measured alone: 3.6 against 5.0 µs per frame.

        With ``look`` (ids were retired since this Store last looked), the first row
        takes an id above the retired ones if SQLite's own choice would not be: the
        rows after it follow on from it.
        """
        first = retired.next_id(conn, frames) if look else None
        if first is not None:
            row = dict(zip(FRAME_COLUMNS, rows[0], strict=True))
            conn.execute(frames.insert().values(id=first, **row))
            rows = rows[1:]
        for start in range(0, len(rows), SQLITE_ROWS_PER_INSERT):
            part = rows[start : start + SQLITE_ROWS_PER_INSERT]
            sql = self._multirow_sql.get(len(part))
            if sql is None:
                head, _, values = self._insert_sql.rpartition(" VALUES ")
                sql = self._multirow_sql[len(part)] = (
                    f"{head} VALUES {', '.join([values] * len(part))}"
                )
            conn.exec_driver_sql(sql, tuple(chain.from_iterable(part)))

    def _apply_index(self, conn: Connection, index: IndexBatch) -> None:
        """A batch's index changes but its attributions (see :meth:`write_batches`)."""
        if self._server:
            known = pg_index.apply(conn, index, self.instance)
        else:
            known = index_statements.count_and_merge(conn, index, self.instance)
        if index.tasks:
            index_statements.merge_tasks(
                conn, {k: d for k, d in index.tasks.items() if k[0] in known}
            )
        for cid, at_us, listed in index.listings:
            if self._role(conn, cid) == "link":
                index_statements.reconcile(conn, at_us, listed, self.instance)

    def _role(self, conn: Connection, connection_id: int) -> str | None:
        """A connection's role: "link" (the recorder's own, to ``daemon.url``) or
        "proxy" (a UI's, to ``proxy.upstream``, which may be another daemon)."""
        role = self._roles.get(connection_id)
        if role is None:
            found = conn.execute(
                select(connections.c.role).where(connections.c.id == connection_id)
            ).scalar()
            role = None if found is None else str(found)
        return role

    def _attribute(self, conn: Connection, attributions: list[tuple[int, int, str]]) -> None:
        known = [(self._spawn_ids.pop((c, q), None), c, q, sid) for c, q, sid in attributions]
        by_id = [{"fid": fid, "sid": sid} for fid, _, _, sid in known if fid is not None]
        if by_id:
            conn.execute(
                update(frames).where(frames.c.id == bind("fid")).values(session_id=bind("sid")),
                bound(by_id),
            )
        # Stored before this process started: every spawn_session row is looked at,
        # still through the (type, id) index rather than one that every frame pays for.
        others = [{"cid": c, "seq": q, "sid": sid} for fid, c, q, sid in known if fid is None]
        if others:
            conn.execute(
                update(frames)
                .where(
                    frames.c.type == SPAWN_TYPE,
                    frames.c.connection_id == bind("cid"),
                    frames.c.seq == bind("seq"),
                )
                .values(session_id=bind("sid")),
                bound(others),
            )
