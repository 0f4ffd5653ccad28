"""The database process's one connection, and how Store functions run on it.

SQLite runs on a thread of its own with the stdlib driver; PostgreSQL runs through
asyncpg with the same synchronous Store code (``AsyncConnection.run_sync``).
SQLite's checkpoint housekeeping lives in :mod:`recorder.db.sqlite`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Dialect

from recorder.db.engine import create_engine
from recorder.db.write import FrameRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

T = TypeVar("T")


class WriterDatabase:
    """The writer's one connection, and a way to run :class:`Store` functions on it."""

    def __init__(self, url: str) -> None:
        self.url = url

    @staticmethod
    async def open(url: str) -> WriterDatabase:
        """The writer's connection to ``url``, of the kind its backend writes with."""
        from recorder.db.backend import backend

        return await backend(url).open_writer()

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

    def changed(self) -> None:
        """Work other than a batch was committed (SQLite measures its WAL)."""


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
