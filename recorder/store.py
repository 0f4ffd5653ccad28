"""The database: engine set-up, migrations, the writer's batch writes, and the queries.

Writes go through :class:`Store`, which only the database process uses, through a
:class:`WriterDatabase`. The INSERT is compiled once per dialect by SQLAlchemy Core
and run at the driver level: several hundred rows per statement on SQLite, one
``executemany`` per batch on PostgreSQL (asyncpg pipelines it). Both are several
times faster than Core's own executemany, with the same SQL on both databases.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from sqlalchemy import Select, and_, bindparam, event, func, select, true, tuple_, update
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import Connection, Dialect, make_url

from recorder.protocol import LOST_STATUS, TERMINAL_STATUSES, IndexBatch, SessionDelta, TaskDelta
from recorder.schema import connections, frames, sessions, tasks

if TYPE_CHECKING:
    # Imported where used: the database process writing SQLite needs neither, and
    # they are about 20 MB of its memory.
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger("recorder.store")
T = TypeVar("T")

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


# 13 parameters a row: 6500 a statement, under SQLite's limit of 32766 bound
# parameters (999 before SQLite 3.32, 2020).
SQLITE_ROWS_PER_INSERT = (
    500 if sqlite3.sqlite_version_info >= (3, 32) else 999 // len(FRAME_COLUMNS)
)


class StoreError(Exception):
    """A database problem worth one line to the user."""


# --- engine -------------------------------------------------------------------


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def prepare_sqlite_file(url: str) -> None:
    """Create the SQLite file's directory (0700) and the file itself (0600) if missing.

    SQLite creates its -wal and -shm files with the database file's permissions.
    """
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def require_database(url: str) -> None:
    """For read-only commands: a missing SQLite file is an error, not a new database."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise StoreError(
            f"no database at {path} (start `recorder run` or run `recorder db upgrade`)"
        )


def create_engine(url: str) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, pool_pre_ping=False)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets the CLI read while the service writes; NORMAL is durable across
    # application crashes and only loses the last commits on power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    # 4 MiB of page cache (the default is 2): inserts append at the right edge of
    # every B-tree, so the hot pages are few; 16 MiB measured no faster.
    cursor.execute("PRAGMA cache_size=-4096")
    cursor.close()


# --- migrations ---------------------------------------------------------------


def migrations_dir() -> Path:
    """The alembic scripts: packaged as recorder/migrations in the wheel, or the
    top-level alembic/ directory of a source checkout (editable installs too)."""
    here = Path(__file__).resolve().parent
    packaged = here / "migrations"
    return packaged if packaged.is_dir() else here.parent / "alembic"


def alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade_sync(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    from alembic import command

    command.upgrade(cfg, revision)


def _current_sync(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade_sync(connection: Connection, revision: str = "head") -> tuple[str | None, str | None]:
    """Run migrations up to ``revision`` in one transaction; returns (before, after)."""
    with connection.begin():
        before = _current_sync(connection)
        _upgrade_sync(connection, revision)
        after = _current_sync(connection)
    return before, after


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Run migrations up to ``revision``; returns (before, after)."""
    async with engine.connect() as conn:
        return await conn.run_sync(upgrade_sync, revision)


async def current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_sync)


# --- writes (the database process only) ---------------------------------------------


class Store:
    """The writer's statements, as synchronous functions of a SQLAlchemy Connection.

    Written once, run two ways (see :class:`WriterDatabase`): on SQLite a whole
    batch runs in one call on the writer's database thread, with no trip back to
    the event loop between statements; on PostgreSQL through
    ``AsyncConnection.run_sync`` over asyncpg. Each method is one transaction.
    """

    def __init__(self, dialect: Dialect) -> None:
        compiled = frames.insert().compile(dialect=dialect, column_keys=list(FRAME_COLUMNS))
        # Map the compiled statement's parameter order onto our row tuples.
        order = compiled.positiontup or list(FRAME_COLUMNS)
        if list(order) != list(FRAME_COLUMNS):
            raise RuntimeError(f"unexpected parameter order {order}")
        self._insert_sql = str(compiled)
        self._multirow = dialect.name == "sqlite"
        self._multirow_sql: dict[int, str] = {}

    def open_connection(
        self, conn: Connection, role: str, url: str, opened_us: int, client_addr: str | None = None
    ) -> int:
        with conn.begin():
            result = conn.execute(
                connections.insert().values(
                    role=role,
                    url=url,
                    opened_at_us=opened_us,
                    client_addr=client_addr,
                    frame_count=0,
                )
            )
        pk = result.inserted_primary_key
        assert pk is not None
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
                .where(connections.c.closed_at_us.is_(None))
                .values(
                    closed_at_us=now_us, closed_by="service", error="recorder stopped uncleanly"
                )
            )
        return int(result.rowcount)

    def active_session_ids(self, conn: Connection) -> list[str]:
        with conn.begin():
            result = conn.execute(
                select(sessions.c.id)
                .where(sessions.c.status.is_not(None), sessions.c.status.not_in(TERMINAL_STATUSES))
                .order_by(sessions.c.last_seen_us.desc())
            )
            return [row[0] for row in result]

    def write_batch(self, conn: Connection, rows: Sequence[FrameRow], index: IndexBatch) -> None:
        with conn.begin():
            if not rows:
                pass
            elif self._multirow:
                self._insert_multirow(conn, rows)
            else:
                conn.exec_driver_sql(self._insert_sql, list(rows))
            self._apply_index(conn, index)

    def _insert_multirow(self, conn: Connection, rows: Sequence[FrameRow]) -> None:
        """SQLite: hundreds of rows per ``INSERT ... VALUES (...), (...), ...``.

        Python's sqlite3 executemany steps each row separately and takes the GIL
        back every time; one multi-row statement does all its B-tree work in one
        step without the GIL, in parallel with the writer classifying the next
        batch. Measured alone: 3.6 against 5.0 µs per frame.
        """
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
        if index.connection_frames:
            stmt = (
                update(connections)
                .where(connections.c.id == _bind("cid"))
                .values(frame_count=connections.c.frame_count + _bind("n"))
            )
            conn.execute(
                stmt, _bound([{"cid": cid, "n": n} for cid, n in index.connection_frames.items()])
            )
        if index.sessions:
            self._merge_sessions(conn, index.sessions)
        if index.tasks:
            self._merge_tasks(conn, index.tasks)
        for at_us, listed in index.listings:
            self._reconcile(conn, at_us, listed)

    def _merge_sessions(self, conn: Connection, deltas: dict[str, SessionDelta]) -> None:
        existing: dict[str, Any] = {}
        ids = list(deltas)
        for chunk in _chunks(ids, 500):
            result = conn.execute(select(sessions).where(sessions.c.id.in_(chunk)))
            existing.update({row.id: row._mapping for row in result})
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for sid, d in deltas.items():
            old = existing.get(sid)
            row = {
                "id": sid,
                "first_seen_us": d.first_seen_us
                if old is None
                else min(old["first_seen_us"], d.first_seen_us),
                "last_seen_us": d.last_seen_us
                if old is None
                else max(old["last_seen_us"], d.last_seen_us),
                "frame_count": d.frame_count + (0 if old is None else old["frame_count"]),
            }
            for key in (
                "orchestrator_id",
                "session_type",
                "status",
                "task_id",
                "task_description",
                "started_at_us",
                "ended_at_us",
                "last_error",
            ):
                new = getattr(d, key)
                row[key] = new if new is not None else (None if old is None else old[key])
            (inserts if old is None else updates).append(row)
        if inserts:
            conn.execute(sessions.insert(), inserts)
        if updates:
            conn.execute(
                update(sessions)
                .where(sessions.c.id == _bind("id"))
                .values({k: _bind(k) for k in updates[0] if k != "id"}),
                _bound(updates),
            )

    def _merge_tasks(self, conn: Connection, deltas: dict[tuple[str, str], TaskDelta]) -> None:
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
            row: dict[str, Any] = {
                "session_id": sid,
                "task_id": tid,
                "first_seen_us": d.first_seen_us
                if old is None
                else min(old["first_seen_us"], d.first_seen_us),
                "last_seen_us": d.last_seen_us
                if old is None
                else max(old["last_seen_us"], d.last_seen_us),
                "frame_count": d.frame_count + (0 if old is None else old["frame_count"]),
            }
            for key in ("description", "status", "started_at_us", "ended_at_us", "error"):
                new = getattr(d, key)
                row[key] = new if new is not None else (None if old is None else old[key])
            if old is not None and old["started_at_us"] is not None:
                row["started_at_us"] = old["started_at_us"]
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
                update(tasks).where(tasks.c.id == _bind("pk")).values({k: _bind(k) for k in cols}),
                _bound(updates),
            )

    def _reconcile(self, conn: Connection, at_us: int, listed: frozenset[str]) -> None:
        """Sessions we believe active that the daemon's list no longer names are lost."""
        result = conn.execute(
            select(sessions.c.id).where(
                sessions.c.status.is_not(None),
                sessions.c.status.not_in(TERMINAL_STATUSES),
                sessions.c.last_seen_us < at_us,
            )
        )
        gone = [sid for (sid,) in result if sid not in listed]
        for chunk in _chunks(gone, 500):
            conn.execute(
                update(sessions)
                .where(sessions.c.id.in_(chunk))
                .values(status=LOST_STATUS, last_error="no longer in the daemon's sessions_list")
            )


# --- the writer's connection ---------------------------------------------------------

# A passive checkpoint starts after about this much was written to the WAL
# (SQLite's own automatic checkpoint comes after 1000 pages, 4 MiB).
CHECKPOINT_BYTES = 4 * 1024 * 1024
# After about this much, the writer lets the checkpoints catch up so that the WAL
# starts over: passive checkpoints alone never restart it while writes go on.
WAL_RESTART_BYTES = 64 * 1024 * 1024
# A frame row's share of the WAL besides its payload: the row and four index entries.
ROW_OVERHEAD_BYTES = 256


class WriterDatabase:
    """The writer's one connection, and a way to run :class:`Store` functions on it."""

    def __init__(self, url: str) -> None:
        self.url = url

    @staticmethod
    async def open(url: str) -> WriterDatabase:
        db: WriterDatabase
        if make_url(url).get_backend_name() == "sqlite":
            db = SqliteWriterDatabase(url)
        else:
            db = AsyncWriterDatabase(url)
        await db.connect()
        return db

    @property
    def dialect(self) -> Dialect:
        raise NotImplementedError

    async def connect(self) -> None:
        raise NotImplementedError

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)``, on the connection, wherever it lives."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close the connection (:meth:`connect` opens a new one)."""
        raise NotImplementedError

    async def shutdown(self) -> None:
        """Close the connection and release everything else."""
        await self.close()

    async def reopen(self) -> None:
        """After a failure: a fresh connection (the old one may be broken)."""
        try:
            await self.close()
        except Exception:
            pass
        await self.connect()

    def wrote(self, rows: Sequence[FrameRow]) -> None:
        """These rows were committed (SQLite checkpoints by what it wrote)."""


class AsyncWriterDatabase(WriterDatabase):
    """PostgreSQL: asyncpg, with the synchronous Store code run through run_sync."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.engine = create_engine(url)
        self._conn: AsyncConnection | None = None

    @property
    def dialect(self) -> Dialect:
        return self.engine.dialect

    async def connect(self) -> None:
        self._conn = await self.engine.connect()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return await self._conn.run_sync(fn, *args)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def shutdown(self) -> None:
        try:
            await self.close()
        finally:
            await self.engine.dispose()


class SqliteWriterDatabase(WriterDatabase):
    """SQLite: the stdlib driver on a thread of its own, one call per transaction.

    Through aiosqlite, each statement of a batch was a round trip through the
    writer's event loop, which was busy classifying the next batch, so the database
    thread spent most of a batch waiting for its turn.

    Checkpoints (copying the WAL into the database file, with an fsync) run passive,
    on a second connection and thread, so commits do not wait for them (measured:
    +12 % ingest against SQLite's automatic checkpoints). A passive checkpoint cannot
    restart a WAL that is being appended to, so every ``restart_bytes`` the writer
    waits, between two transactions, for the checkpoint to catch up: the next
    transaction then starts the WAL over, and the file stays near that size.
    """

    def __init__(
        self,
        url: str,
        *,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
        restart_bytes: int = WAL_RESTART_BYTES,
    ) -> None:
        super().__init__(url)
        self.checkpoint_bytes = checkpoint_bytes
        self.restart_bytes = restart_bytes
        self.checkpoints = 0
        self.engine = sa_create_engine(make_url(url).set(drivername="sqlite+pysqlite"))
        event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "connect", self._writer_pragmas)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._checkpoint: Future[None] | None = None
        self._unchecked = 0
        self._since_restart = 0
        self._conn: Connection | None = None
        path = sqlite_path(url)
        self._path = str(path) if path is not None else None

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
        if self._since_restart >= self.restart_bytes:
            self._since_restart = 0
            await self.settle()
            await self._in_thread(_catch_up, conn)
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
        written = sum(row[6] for row in rows) + ROW_OVERHEAD_BYTES * len(rows)
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


def _catch_up(conn: Connection) -> None:
    """Between transactions: checkpoint what is left, so the next write restarts the WAL.

    Readers still using older parts of the WAL keep it from restarting; it is
    tried again later.
    """
    try:
        # On the driver's connection: through SQLAlchemy's, the statement would
        # begin a transaction that the next batch's begin() refuses.
        conn.connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
    except Exception as exc:
        log.warning("sqlite checkpoint failed", error=str(exc))


def _bind(name: str) -> Any:
    # Bound names must differ from column names in UPDATE ... SET.
    return bindparam(f"b_{name}")


def _bound(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{f"b_{k}": v for k, v in row.items()} for row in rows]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- reads (CLI) ----------------------------------------------------------------


@dataclass(frozen=True)
class FrameFilter:
    session_id: str | None = None
    task_id: str | None = None
    type: str | None = None
    direction: str | None = None
    connection_id: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    limit: int = 0


def frames_query(f: FrameFilter) -> Select[Any]:
    conds = []
    if f.session_id is not None:
        conds.append(frames.c.session_id == f.session_id)
    if f.task_id is not None:
        conds.append(frames.c.task_id == f.task_id)
    if f.type is not None:
        conds.append(frames.c.type == f.type)
    if f.direction is not None:
        conds.append(frames.c.direction == f.direction)
    if f.connection_id is not None:
        conds.append(frames.c.connection_id == f.connection_id)
    if f.since_us is not None:
        conds.append(frames.c.received_at_us >= f.since_us)
    if f.until_us is not None:
        conds.append(frames.c.received_at_us < f.until_us)
    stmt = select(frames).where(and_(true(), *conds)).order_by(frames.c.id)
    if f.limit:
        stmt = stmt.limit(f.limit)
    return stmt


async def iter_frames(engine: AsyncEngine, f: FrameFilter) -> AsyncIterator[Any]:
    """Frames in recording order, streamed: memory stays flat for millions of rows."""
    async with engine.connect() as conn:
        result = await conn.stream(frames_query(f).execution_options(yield_per=1000))
        async for row in result:
            yield row


async def list_sessions(
    engine: AsyncEngine, *, status: str | None = None, since_us: int | None = None, limit: int = 50
) -> list[Any]:
    stmt = select(sessions)
    if status is not None:
        stmt = stmt.where(sessions.c.status == status)
    if since_us is not None:
        stmt = stmt.where(sessions.c.last_seen_us >= since_us)
    stmt = stmt.order_by(sessions.c.first_seen_us.desc(), sessions.c.id.desc())
    if limit:
        stmt = stmt.limit(limit)
    async with engine.connect() as conn:
        return list(await conn.execute(stmt))


@dataclass(frozen=True)
class Status:
    connected_since_us: int | None
    last_connection: Any
    last_frame_us: int | None
    frame_count: int
    session_count: int
    active_sessions: int
    database_bytes: int | None


async def status(engine: AsyncEngine) -> Status:
    async with engine.connect() as conn:
        last_conn = (
            await conn.execute(
                select(connections)
                .where(connections.c.role == "link")
                .order_by(connections.c.id.desc())
                .limit(1)
            )
        ).first()
        last_frame = (await conn.execute(select(func.max(frames.c.id)))).scalar()
        last_frame_us = None
        if last_frame is not None:
            last_frame_us = (
                await conn.execute(select(frames.c.received_at_us).where(frames.c.id == last_frame))
            ).scalar()
        frame_count = (await conn.execute(select(func.count()).select_from(frames))).scalar() or 0
        session_count = (
            await conn.execute(select(func.count()).select_from(sessions))
        ).scalar() or 0
        active = (
            await conn.execute(
                select(func.count())
                .select_from(sessions)
                .where(sessions.c.status.is_not(None), sessions.c.status.not_in(TERMINAL_STATUSES))
            )
        ).scalar() or 0
        size: int | None = None
        if engine.dialect.name == "postgresql":
            size = (
                await conn.execute(select(func.pg_database_size(func.current_database())))
            ).scalar()
    if engine.dialect.name == "sqlite":
        path = sqlite_path(str(engine.url))
        if path is not None:
            size = sum(
                p.stat().st_size
                for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                if p.exists()
            )
    connected_since = None
    if last_conn is not None and last_conn.closed_at_us is None:
        connected_since = last_conn.opened_at_us
    return Status(
        connected_since_us=connected_since,
        last_connection=last_conn,
        last_frame_us=last_frame_us,
        frame_count=int(frame_count),
        session_count=int(session_count),
        active_sessions=int(active),
        database_bytes=size,
    )
