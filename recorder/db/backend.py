"""Which database a URL names, decided once, and what differs between them.

The recorder writes to SQLite (one file: the embedded default) or PostgreSQL (a
server, for several recorders or months of history). Every question whose answer
differs between the two is answered here, by a :class:`Backend`: the file, how to
prepare and to lock it, a read-only connection, the writer's connection, the size
and the space given back, partitions, ids, the SQL the read side spells
differently, how a person names the database. Nothing outside ``recorder/db/``
asks which backend it has; a third backend would be a class here, a way for the
writer's ``Store`` to write its batches, and its migrations.

Light to import: the query commands, and the service's own process, load no
SQLAlchemy (its writer process does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from recorder.addresses import redact_url
from recorder.db.urls import canonical

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Dialect
    from sqlalchemy.ext.asyncio import AsyncEngine

    from recorder.db.connection import WriterDatabase
    from recorder.db.locks import InstanceLock
    from recorder.db.readonly import Reader


class Backend:
    """One database, by its URL (the async driver's: ``sqlite+aiosqlite:///...``)."""

    name: ClassVar[str]
    # A server across a connection, where each statement is a round trip: the writer
    # sends a batch's frames with one COPY and its index changes in one statement
    # (recorder.db.write.Store), not a statement per change.
    server: ClassVar[bool] = False
    # frames are partitioned by month (retention drops whole months).
    partitioned: ClassVar[bool] = False
    # A deleted row's id may be handed out again (the writer keeps it from happening).
    reuses_ids: ClassVar[bool] = False
    # Ids are committed in their order (one writer): a follower that has read up to an
    # id never finds a smaller one later. PostgreSQL's sequences hand out ids when a
    # row is written, and several recorders commit in any order.
    commits_ids_in_order: ClassVar[bool] = True
    # A read-only reader is read on the event loop (SQLite: milliseconds a page), or
    # on a thread of its own (asyncpg runs a loop of its own).
    reads_on_loop: ClassVar[bool] = False

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def shown(self) -> str:
        """The database as a person names it: a file's path, or the URL, masked."""
        raise NotImplementedError

    @property
    def path(self) -> Path | None:
        """The database's file, if it is one: what a full disk, a lock, a copy is about."""
        return None

    def prepare(self) -> None:
        """Before the writer's first open: what must exist for it (SQLite: the file)."""

    def missing(self) -> str | None:
        """Why there is no database to read yet (a read-only command's one line)."""
        return None

    def read_only(self, shown: str | None = None) -> Reader:
        raise NotImplementedError

    async def open_writer(self) -> WriterDatabase:
        raise NotImplementedError

    def engine(self) -> AsyncEngine:
        """The writer's engine (migrations, `recorder db`)."""
        from sqlalchemy.ext.asyncio import create_async_engine

        # hide_parameters: an error message must never carry frame data into a log.
        return create_async_engine(self.url, pool_pre_ping=False, hide_parameters=True)

    def lock(self, instance: str) -> InstanceLock:
        """One recorder per database (SQLite) or per instance name (PostgreSQL)."""
        raise NotImplementedError

    def holder(self, instance: str, read: Reader | None = None) -> str | None:
        """Who holds :meth:`lock` (PID, host, since), or None; CannotTell when unknown."""
        raise NotImplementedError

    def full_vacuum(self) -> tuple[int, int]:
        """VACUUM the whole database, with it to itself: its size before and after."""
        raise NotImplementedError

    # --- SQL the read side spells differently ------------------------------------

    def contains(self, column: str, param: str) -> str:
        """A condition: ``column`` contains the text bound to ``param``."""
        raise NotImplementedError

    def starts_with(self, column: str) -> str:
        """A condition: ``column`` starts with ``:prefix`` (``:beyond`` is the prefix
        followed by the largest character, ``:n`` its length)."""
        raise NotImplementedError

    def unindexed(self, column: str) -> str:
        """``column``, where the planner must not walk its index (a rare type is
        better found through the type's)."""
        return column

    def table_exists(self, table: str) -> str:
        """A query with a row when ``table`` (a literal name) exists."""
        raise NotImplementedError

    def page_sql(self, columns: str, where: str, rows: int) -> str:
        """One page of frames: ``where`` bounds it by ``:after`` and ``:upto``, ``rows``
        by count; ``:budget`` by bytes where the database cuts it itself."""
        return f"SELECT {columns} FROM frames{where} ORDER BY id LIMIT {int(rows)}"

    # --- the writer's, on its connection (the database process) -------------------

    @classmethod
    def database_bytes(cls, conn: Connection) -> int:
        """What the recordings occupy (what storage.max_db_size holds)."""
        raise NotImplementedError

    @classmethod
    def give_back_space(cls, conn: Connection, pages: int) -> int:
        """Free space back to the file system after a purge; how much is left to give."""
        return 0

    @classmethod
    def insert(cls, table: Any) -> Any:
        """INSERT with ``on_conflict_do_update``: each dialect has its own construct."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"
    reuses_ids = True
    reads_on_loop = True

    @property
    def path(self) -> Path:
        rest = self.url.partition("://")[2].partition("?")[0]
        return Path(rest[1:] if rest.startswith("/") else rest)

    @property
    def shown(self) -> str:
        return str(self.path)

    def prepare(self) -> None:
        """Create the file's directory (0700) and the file (0600) if missing: SQLite
        creates its -wal and -shm files with the database file's permissions."""
        path = self.path
        if path.exists():
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))

    def missing(self) -> str | None:
        if self.path.exists():
            return None
        return f"no database at {self.shown} (start `recorder run` or run `recorder db upgrade`)"

    def read_only(self, shown: str | None = None) -> Reader:
        from recorder.db.readonly import SqliteReader

        return SqliteReader(self.path, shown or self.shown, self)

    async def open_writer(self) -> WriterDatabase:
        from recorder.db.sqlite import SqliteWriterDatabase

        db = SqliteWriterDatabase(self.url)
        await db.connect()
        return db

    def engine(self) -> AsyncEngine:
        from sqlalchemy import event

        from recorder.db.sqlite import sqlite_pragmas

        engine = super().engine()
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine

    def lock(self, instance: str) -> InstanceLock:
        from recorder.db.locks import FileLock

        return FileLock(self.path, self.shown)

    def holder(self, instance: str, read: Reader | None = None) -> str | None:
        from recorder.db.locks import file_holder

        return file_holder(self.path)

    def full_vacuum(self) -> tuple[int, int]:
        import sqlite3

        before = self.path.stat().st_size
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return before, self.path.stat().st_size

    def contains(self, column: str, param: str) -> str:
        return f"instr({column}, :{param}) > 0"

    def starts_with(self, column: str) -> str:
        # SQLite compares bytes: a range on the key finds every value starting with it.
        return f"{column} >= :prefix AND {column} < :beyond"

    def unindexed(self, column: str) -> str:
        return f"+{column}"  # SQLite's unary plus keeps the planner off its index

    def table_exists(self, table: str) -> str:
        return f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{table}'"

    @classmethod
    def database_bytes(cls, conn: Connection) -> int:
        """The file, less the free pages SQLite would give back."""
        driver = conn.connection.driver_connection
        assert driver is not None
        pages = driver.execute("PRAGMA page_count").fetchone()[0]
        free = driver.execute("PRAGMA freelist_count").fetchone()[0]
        size = driver.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    @classmethod
    def give_back_space(cls, conn: Connection, pages: int) -> int:
        """Up to ``pages`` free pages back to the file system (incremental vacuum; a
        database made before it was on needs `recorder db vacuum` once). Returns how
        many free pages are left to give back (0: nothing more to do)."""
        # On the driver's connection: SQLAlchemy's would wrap it in a transaction, and
        # incremental_vacuum does its work outside one.
        driver = conn.connection.driver_connection
        assert driver is not None
        if driver.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return 0  # an older file: incremental_vacuum would free nothing, ever
        # executescript steps the pragma to the end; execute() would free one page.
        driver.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        return int(driver.execute("PRAGMA freelist_count").fetchone()[0])

    @classmethod
    def insert(cls, table: Any) -> Any:
        from sqlalchemy.dialects.sqlite import insert

        return insert(table)


# PostgreSQL: what a frame row costs besides its payload (header, columns, index
# entries): 194 bytes measured over 100 000 stream chunks.
PG_ROW_BYTES = 200


class PostgresBackend(Backend):
    name = "postgresql"
    server = True
    commits_ids_in_order = False
    partitioned = True

    @property
    def dsn(self) -> str:
        """The URL asyncpg takes (no driver in the scheme)."""
        return "postgresql://" + self.url.partition("://")[2]

    @property
    def shown(self) -> str:
        return redact_url(self.dsn)

    def read_only(self, shown: str | None = None) -> Reader:
        from recorder.db.readonly import PostgresReader

        return PostgresReader(self.dsn, shown or self.shown, self)

    async def open_writer(self) -> WriterDatabase:
        from recorder.db.connection import AsyncWriterDatabase

        db = AsyncWriterDatabase(self.url)
        await db.connect()
        return db

    def lock(self, instance: str) -> InstanceLock:
        from recorder.db.locks import AdvisoryLock

        return AdvisoryLock(self.dsn, instance, self.shown)

    def holder(self, instance: str, read: Reader | None = None) -> str | None:
        from recorder.db.locks import advisory_holder

        reader = read or self.read_only()
        try:
            return advisory_holder(reader, instance)
        finally:
            if read is None:
                reader.close()

    def full_vacuum(self) -> tuple[int, int]:
        import asyncio

        import asyncpg

        async def vacuum() -> tuple[int, int]:
            conn = await asyncpg.connect(self.dsn)
            try:
                size = "SELECT pg_database_size(current_database())"
                before = int(await conn.fetchval(size))
                await conn.execute("VACUUM")
                return before, int(await conn.fetchval(size))
            finally:
                await conn.close()

        return asyncio.run(vacuum())

    def contains(self, column: str, param: str) -> str:
        return f"strpos({column}, :{param}) > 0"

    def starts_with(self, column: str) -> str:
        # Its collations may not sort by bytes: the text itself is compared.
        return f"left({column}, :n) = :prefix"

    def table_exists(self, table: str) -> str:
        return (
            "SELECT 1 FROM information_schema.tables"
            f" WHERE table_schema = current_schema() AND table_name = '{table}'"
        )

    def page_sql(self, columns: str, where: str, rows: int) -> str:
        # The byte budget in SQL: the page ends at the last frame that starts within it
        # (stopping a server-side cursor early would need a transaction around it).
        cut = (
            "SELECT coalesce(max(id), :after) FROM (SELECT id, sum(size) OVER (ORDER BY id) - size"
            f" AS before FROM (SELECT id, size FROM frames{where} ORDER BY id LIMIT {int(rows)})"
            " AS page) AS sized WHERE before < :budget"
        )
        bounded = where.replace("id <= :upto", f"id <= ({cut})")
        return f"SELECT {columns} FROM frames{bounded} ORDER BY id"

    @classmethod
    def database_bytes(cls, conn: Connection) -> int:
        """PostgreSQL keeps what a purge frees for reuse and its files never shrink,
        so their size could not tell a purge that it freed enough (each run would
        purge the same excess again): the frames' own bytes instead, from the daily
        tallies, with a row's fixed cost."""
        from sqlalchemy import func, select

        from recorder.db.schema import frame_days

        total = select(
            func.coalesce(func.sum(frame_days.c.bytes), 0),
            func.coalesce(func.sum(frame_days.c.frames), 0),
        )
        with conn.begin():
            found = conn.execute(total).one()
        return int(found[0]) + int(found[1]) * PG_ROW_BYTES

    @classmethod
    def insert(cls, table: Any) -> Any:
        from sqlalchemy.dialects.postgresql import insert

        return insert(table)


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (SqliteBackend, PostgresBackend)}


def backend(url: str) -> Backend:
    """The backend of a URL :func:`recorder.db.urls.database_url` has made (``sqlite+aiosqlite://``,
    ``postgresql+asyncpg://``)."""
    scheme = url.partition("://")[0].split("+")[0].lower()
    return BACKENDS[canonical(scheme)](url)


def backend_of(conn: Connection) -> type[Backend]:
    """The backend of an open connection (the writer's functions have only that)."""
    return BACKENDS[conn.dialect.name]


def backend_of_dialect(dialect: Dialect) -> type[Backend]:
    return BACKENDS[dialect.name]


def display_database(url: str) -> str:
    """A database URL as a person names it (one no backend takes: masked, as written)."""
    try:
        return backend(url).shown
    except KeyError:
        return redact_url(url)
