"""The read side: the queries the CLI (and later replay and cleanup) share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, func, select, true

from recorder.db.engine import sqlite_path
from recorder.db.schema import connections, frames, sessions
from recorder.protocol.index import TERMINAL_STATUSES

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


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
