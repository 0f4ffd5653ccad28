"""The database: engine set-up, migrations, the writer's batch writes, and the queries.

Writes go through :class:`Store`, which only the writer task uses. Frames are
inserted with one driver-level ``executemany`` per batch (SQLAlchemy Core compiles
the statement once, per dialect): that is several times faster than Core's own
executemany and keeps the same SQL portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Select, and_, bindparam, event, func, select, true, tuple_, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from recorder.protocol import LOST_STATUS, TERMINAL_STATUSES, IndexBatch, SessionDelta, TaskDelta
from recorder.schema import connections, frames, sessions, tasks

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
    engine = create_async_engine(url, pool_pre_ping=False)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets the CLI read while the service writes; NORMAL is durable across
            # application crashes and only loses the last commits on power loss.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            # 16 MiB of page cache (the default is 2 MiB): index pages stay hot.
            cursor.execute("PRAGMA cache_size=-16384")
            cursor.close()

    return engine


# --- migrations ---------------------------------------------------------------


def migrations_dir() -> Path:
    """The alembic scripts: packaged as recorder/migrations in the wheel, or the
    top-level alembic/ directory of a source checkout (editable installs too)."""
    here = Path(__file__).resolve().parent
    packaged = here / "migrations"
    return packaged if packaged.is_dir() else here.parent / "alembic"


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade_sync(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


def _current_sync(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Run migrations up to ``revision``; returns (before, after)."""
    async with engine.begin() as conn:
        before = await conn.run_sync(_current_sync)
        await conn.run_sync(_upgrade_sync, revision)
        after = await conn.run_sync(_current_sync)
    return before, after


async def current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_sync)


# --- writes (the writer task only) ----------------------------------------------


class Store:
    """Write access to the database, used by exactly one task: the writer."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        compiled = frames.insert().compile(dialect=engine.dialect, column_keys=list(FRAME_COLUMNS))
        # Map the compiled statement's parameter order onto our row tuples.
        order = compiled.positiontup or list(FRAME_COLUMNS)
        if list(order) != list(FRAME_COLUMNS):
            raise RuntimeError(f"unexpected parameter order {order}")
        self._insert_sql = str(compiled)
        self._conn: AsyncConnection | None = None

    async def open(self) -> None:
        self._conn = await self.engine.connect()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def reopen(self) -> None:
        """After a failure: a fresh connection (the old one may be broken)."""
        try:
            await self.close()
        except Exception:
            self._conn = None
        await self.open()

    @property
    def conn(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def open_connection(
        self, role: str, url: str, opened_us: int, client_addr: str | None = None
    ) -> int:
        async with self.conn.begin():
            result = await self.conn.execute(
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

    async def close_connection(
        self,
        connection_id: int,
        closed_us: int,
        *,
        code: int | None,
        reason: str | None,
        closed_by: str | None,
        error: str | None,
    ) -> None:
        async with self.conn.begin():
            await self.conn.execute(
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

    async def close_dangling(self, now_us: int) -> int:
        """Connections left open by a service that died: mark them closed by the service."""
        async with self.conn.begin():
            result = await self.conn.execute(
                update(connections)
                .where(connections.c.closed_at_us.is_(None))
                .values(
                    closed_at_us=now_us, closed_by="service", error="recorder stopped uncleanly"
                )
            )
        return int(result.rowcount)

    async def active_session_ids(self) -> list[str]:
        async with self.conn.begin():
            result = await self.conn.execute(
                select(sessions.c.id)
                .where(sessions.c.status.is_not(None), sessions.c.status.not_in(TERMINAL_STATUSES))
                .order_by(sessions.c.last_seen_us.desc())
            )
            return [row[0] for row in result]

    async def write_batch(self, rows: Sequence[FrameRow], index: IndexBatch) -> None:
        async with self.conn.begin():
            if rows:
                await self.conn.exec_driver_sql(self._insert_sql, list(rows))
            await self._apply_index(index)

    async def _apply_index(self, index: IndexBatch) -> None:
        conn = self.conn
        if index.connection_frames:
            stmt = (
                update(connections)
                .where(connections.c.id == _bind("cid"))
                .values(frame_count=connections.c.frame_count + _bind("n"))
            )
            await conn.execute(
                stmt, _bound([{"cid": cid, "n": n} for cid, n in index.connection_frames.items()])
            )
        if index.sessions:
            await self._merge_sessions(index.sessions)
        if index.tasks:
            await self._merge_tasks(index.tasks)
        for at_us, listed in index.listings:
            await self._reconcile(at_us, listed)

    async def _merge_sessions(self, deltas: dict[str, SessionDelta]) -> None:
        conn = self.conn
        existing: dict[str, Any] = {}
        ids = list(deltas)
        for chunk in _chunks(ids, 500):
            result = await conn.execute(select(sessions).where(sessions.c.id.in_(chunk)))
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
            await conn.execute(sessions.insert(), inserts)
        if updates:
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == _bind("id"))
                .values({k: _bind(k) for k in updates[0] if k != "id"}),
                _bound(updates),
            )

    async def _merge_tasks(self, deltas: dict[tuple[str, str], TaskDelta]) -> None:
        conn = self.conn
        existing: dict[tuple[str, str], Any] = {}
        keys = list(deltas)
        for chunk in _chunks(keys, 300):
            result = await conn.execute(
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
            await conn.execute(tasks.insert(), inserts)
        if updates:
            cols = [k for k in updates[0] if k not in ("pk", "session_id", "task_id")]
            await conn.execute(
                update(tasks).where(tasks.c.id == _bind("pk")).values({k: _bind(k) for k in cols}),
                _bound(updates),
            )

    async def _reconcile(self, at_us: int, listed: frozenset[str]) -> None:
        """Sessions we believe active that the daemon's list no longer names are lost."""
        result = await self.conn.execute(
            select(sessions.c.id).where(
                sessions.c.status.is_not(None),
                sessions.c.status.not_in(TERMINAL_STATUSES),
                sessions.c.last_seen_us < at_us,
            )
        )
        gone = [sid for (sid,) in result if sid not in listed]
        for chunk in _chunks(gone, 500):
            await self.conn.execute(
                update(sessions)
                .where(sessions.c.id.in_(chunk))
                .values(status=LOST_STATUS, last_error="no longer in the daemon's sessions_list")
            )


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
