"""The database's size, and giving space back after a purge: what the cleanup's
``storage.max_db_size`` reads and what `recorder db vacuum` does. The backend says
how (:mod:`recorder.db.backend`); these run on the writer's connection, in the
database process (or the CLI), like :mod:`recorder.db.cleanup`'s functions.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from recorder.db.backend import backend, backend_of


def database_bytes(conn: Connection) -> int:
    """What the recordings occupy (see :meth:`recorder.db.backend.Backend.database_bytes`)."""
    return backend_of(conn).database_bytes(conn)


def give_back_space(conn: Connection, pages: int = 2000) -> int:
    """Free space back to the file system, ``pages`` at a time; how much is left to give."""
    return backend_of(conn).give_back_space(conn, pages)


def full_vacuum(url: str) -> tuple[int, int]:
    """VACUUM the whole database (SQLite: also switching an older file to incremental
    vacuum); its size before and after. Needs the database to itself."""
    return backend(url).full_vacuum()
