"""The database's size, and giving space back after a purge: what the cleanup's
``storage.max_db_size`` reads and what `recorder db vacuum` does.

Synchronous functions of a SQLAlchemy Connection, run by the database process (or
the CLI), like :mod:`recorder.db.cleanup`'s.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

# PostgreSQL: what a frame row costs besides its payload (header, columns, index
# entries): 194 bytes measured over 100 000 stream chunks.
PG_ROW_BYTES = 200


def database_bytes(conn: Connection) -> int:
    """What the recordings occupy. SQLite: the file, less the free pages it would give
    back. PostgreSQL keeps what a purge frees for reuse and its files never shrink, so
    their size could not tell a purge that it freed enough (each run would purge the
    same excess again): the frames' own bytes instead, from the daily tallies, with a
    row's fixed cost."""
    if conn.dialect.name == "sqlite":
        driver = conn.connection.driver_connection
        assert driver is not None
        pages = driver.execute("PRAGMA page_count").fetchone()[0]
        free = driver.execute("PRAGMA freelist_count").fetchone()[0]
        size = driver.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)
    from recorder.db.schema import frame_days

    with conn.begin():
        found = conn.execute(
            select(
                func.coalesce(func.sum(frame_days.c.bytes), 0),
                func.coalesce(func.sum(frame_days.c.frames), 0),
            )
        ).one()
    return int(found[0]) + int(found[1]) * PG_ROW_BYTES


def give_back_space(conn: Connection, pages: int = 2000) -> int:
    """SQLite: return up to ``pages`` free pages to the file system (incremental
    vacuum; a database made before it was on needs `recorder db vacuum` once).
    Returns how many free pages are left to give back (0: nothing more to do)."""
    if conn.dialect.name != "sqlite":
        return 0
    # On the driver's connection: SQLAlchemy's would wrap it in a transaction, and
    # incremental_vacuum does its work outside one.
    driver = conn.connection.driver_connection
    assert driver is not None
    if driver.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return 0  # an older file: incremental_vacuum would free nothing, ever
    # executescript steps the pragma to the end; execute() would free one page.
    driver.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    return int(driver.execute("PRAGMA freelist_count").fetchone()[0])


def full_vacuum(url: str) -> tuple[int, int]:
    """VACUUM the whole database (SQLite: also switching an older file to incremental
    vacuum); its size before and after. Needs the database to itself."""
    if url.startswith("sqlite"):
        import sqlite3

        from recorder.db.reader import sqlite_file

        path = sqlite_file(url)
        before = path.stat().st_size
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return before, path.stat().st_size
    import asyncio

    import asyncpg

    async def pg() -> tuple[int, int]:
        conn = await asyncpg.connect("postgresql://" + url.partition("://")[2])
        try:
            size = "SELECT pg_database_size(current_database())"
            before = int(await conn.fetchval(size))
            await conn.execute("VACUUM")
            return before, int(await conn.fetchval(size))
        finally:
            await conn.close()

    return asyncio.run(pg())
