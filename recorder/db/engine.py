"""Database URLs, files and engines: what every side (writer, CLI, tests) opens with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


class StoreError(Exception):
    """A database problem worth one line to the user."""


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

    # hide_parameters: an error message must never carry frame data into a log.
    engine = create_async_engine(url, pool_pre_ping=False, hide_parameters=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


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
