"""SQLite housekeeping for the writer: its own thread, passive checkpoints, a bounded WAL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Dialect, make_url

from recorder.db.connection import WriterDatabase
from recorder.db.write import ROW_SIZE, FrameRow

log = structlog.get_logger("recorder.db")
T = TypeVar("T")

# A passive checkpoint starts after about this much was written to the WAL
# (SQLite's own automatic checkpoint comes after 1000 pages, 4 MiB).
CHECKPOINT_BYTES = 4 * 1024 * 1024
# After about this much, the writer lets the checkpoints catch up so that the WAL
# starts over: passive checkpoints alone never restart it while writes go on.
WAL_RESTART_BYTES = 64 * 1024 * 1024
# A frame row's share of the WAL besides its payload: the row and four index entries.
ROW_OVERHEAD_BYTES = 256
# How long the catch-up waits for readers still reading from the WAL, once per
# restart_bytes: readers read in short statements (recorder/db/pages.py), so one in
# the middle of a page is done within milliseconds. A catch-up that a reader still
# kept from starting the WAL over is tried again after restart_bytes / this.
READER_WAIT_MS = 20
RETRY_DIVISOR = 8


class SqliteWriterDatabase(WriterDatabase):
    """SQLite: the stdlib driver on a thread of its own, one call per transaction.

    Through aiosqlite, each statement of a batch was a round trip through the
    writer's event loop, which was busy classifying the next batch, so the database
    thread spent most of a batch waiting for its turn.

    Checkpoints (copying the WAL into the database file, with an fsync) run passive,
    on a second connection and thread, so commits do not wait for them (measured:
    +12 % ingest against SQLite's automatic checkpoints). A passive checkpoint cannot
    restart a WAL that is being appended to, so every ``restart_bytes`` the writer
    waits, between two transactions, for the checkpoint to catch up and for readers
    still in the WAL (briefly, see ``_catch_up``): the next transaction then starts
    the WAL over, and the file stays near that size.
    """

    def __init__(
        self,
        url: str,
        *,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
        restart_bytes: int = WAL_RESTART_BYTES,
        reader_wait_ms: int = READER_WAIT_MS,
    ) -> None:
        super().__init__(url)
        self.checkpoint_bytes = checkpoint_bytes
        self.restart_bytes = restart_bytes
        self.reader_wait_ms = reader_wait_ms
        self.checkpoints = 0
        # Catch-ups after which the WAL could not start over (a reader held on).
        self.restarts_missed = 0
        self._restart_due = restart_bytes
        self.engine = create_engine(
            make_url(url).set(drivername="sqlite+pysqlite"), hide_parameters=True
        )
        event.listen(self.engine, "connect", sqlite_pragmas)
        event.listen(self.engine, "connect", self._writer_pragmas)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._checkpoint: Future[None] | None = None
        self._unchecked = 0
        self._since_restart = 0
        # The WAL's size when changed() last looked, and what wrote() has counted
        # since (that part of its growth is counted already).
        self._wal_seen = 0
        self._counted_since_seen = 0
        self._conn: Connection | None = None
        from recorder.db.backend import SqliteBackend

        self._path = str(SqliteBackend(url).path)

    def _writer_pragmas(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")
        # When the WAL starts over, its file is cut back to this size.
        dbapi_conn.execute(f"PRAGMA journal_size_limit={int(self.restart_bytes)}")

    @property
    def dialect(self) -> Dialect:
        return self.engine.dialect

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def connect(self) -> None:
        self._conn = await self._in_thread(self.engine.connect)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("database is not open")
        if self._since_restart >= self._restart_due:
            self._since_restart = 0
            await self.settle()
            if await self._in_thread(_catch_up, conn, self.reader_wait_ms):
                self._restart_due = self.restart_bytes
            else:
                # Tried again soon, not after another restart_bytes: a reader in the
                # middle of a page (or descheduled there) is done by then.
                self.restarts_missed += 1
                self._restart_due = self.restart_bytes // RETRY_DIVISOR
        return await self._in_thread(fn, conn, *args)

    async def settle(self) -> None:
        """Wait for the checkpoint in progress, if any."""
        if self._checkpoint is not None:
            await asyncio.wrap_future(self._checkpoint)
            self._checkpoint = None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._in_thread(conn.close)
        await self.settle()

    async def shutdown(self) -> None:
        await self.close()
        await self._in_thread(self.engine.dispose)
        self._thread.shutdown()
        self._checkpointer.shutdown()

    def wrote(self, rows: Sequence[FrameRow]) -> None:
        written = sum(row[ROW_SIZE] for row in rows) + ROW_OVERHEAD_BYTES * len(rows)
        self._counted_since_seen += written
        self.wrote_bytes(written)

    def changed(self) -> None:
        """After work that is not a batch (a purge, a vacuum step): its share of the WAL
        is not known in advance, so the file is measured."""
        if self._path is None:
            return
        try:
            size = Path(f"{self._path}-wal").stat().st_size
        except OSError:
            return
        grown, self._wal_seen = max(0, size - self._wal_seen), size
        # Batches since the last look grew it too, and wrote() counted them.
        grown, self._counted_since_seen = max(0, grown - self._counted_since_seen), 0
        self.wrote_bytes(grown)

    def wrote_bytes(self, written: int) -> None:
        self._unchecked += written
        self._since_restart += written
        if self._unchecked < self.checkpoint_bytes or self._path is None:
            return
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        self._unchecked = 0
        self.checkpoints += 1
        self._checkpoint = self._checkpointer.submit(_checkpoint, self._path)


def _checkpoint(path: str) -> None:
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as exc:
        # The next one will try again; the WAL only grows meanwhile.
        log.warning("sqlite checkpoint failed", error=str(exc))
    finally:
        conn.close()


def _catch_up(conn: Connection, wait_ms: int) -> bool:
    """Between transactions: checkpoint what is left and wait for the readers still
    on the WAL (``wait_ms`` at most), so that the next write starts it over.

    A RESTART checkpoint: a PASSIVE one gave up at once on a reader that held an
    older snapshot, and the WAL then grew for another ``restart_bytes`` (measured,
    beside a reader scanning in 30 ms statements: a WAL of 309 MiB; with the wait and
    the early retry, 78 MiB). Returns whether the WAL will start over.
    """
    # On the driver's connection: through SQLAlchemy's, the statement would begin a
    # transaction that the next batch's begin() refuses.
    raw: Any = conn.connection.driver_connection
    try:
        (usual,) = raw.execute("PRAGMA busy_timeout").fetchone()
        raw.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
        try:
            busy, _, _ = raw.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            raw.execute(f"PRAGMA busy_timeout={int(usual)}")
    except Exception as exc:
        log.warning("sqlite checkpoint failed", error=str(exc))
        return False
    return not busy


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # Space freed by a purge goes back to the file system (PRAGMA incremental_vacuum,
    # after purges). It takes effect only on a database created with it: this comes
    # before the first table; an older file needs `recorder db vacuum` once.
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    # WAL lets the CLI read while the service writes; NORMAL is durable across
    # application crashes and only loses the last commits on power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    # 4 MiB of page cache (the default is 2): inserts append at the right edge of
    # every B-tree, so the hot pages are few; 16 MiB measured no faster.
    cursor.execute("PRAGMA cache_size=-4096")
    cursor.close()
