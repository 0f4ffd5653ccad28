"""Regression tests from an attack on the cleanup of recorders sharing one PostgreSQL
database: one recorder's retention, partition drops and size limit took another's
recordings, or went on purging. Real parts only: the writer's own code builds the
databases, the real Cleanup runs on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recorder.cleanup.jobs import Cleanup, Direct
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.cleanup_scripts import (
    DAY,
    SECOND,
    chunk,
    config_for,
    open_db,
    record,
    run_policy,
    status,
)


def _asyncpg(pg_url: str) -> str:
    return pg_url.replace("postgresql://", "postgresql+asyncpg://")


async def _old_month(pg_url: str, at: int) -> None:
    import asyncpg

    from recorder.db.partitions import months

    (name, low, high) = months(at, 1)[0]
    db, _, _ = await open_db(_asyncpg(pg_url))
    await db.shutdown()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF frames '
            f"FOR VALUES FROM ({low}) TO ({high})"
        )
    finally:
        await conn.close()


async def _pg_rows(pg_url: str, sql: str) -> list[tuple[Any, ...]]:
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_a_recorders_retention_never_drops_another_recorders_frames(
    pg_url: str, tmp_path: Path
) -> None:
    """Recorder "a" (retention 30d) and recorder "b" (no retention: keep everything)
    share a database. "a" dropped the whole month, with b's session in it: a recorder
    purges only its own (recorder.db.cleanup.match_policy says so), and row by row
    it would not have touched b's session."""
    old = now_us() - 90 * DAY
    await _old_month(pg_url, old)
    url = _asyncpg(pg_url)
    await record(url, [(old, IN, status("theirs", "completed"))], instance="b")
    await record(url, [(old + SECOND, IN, status("mine", "completed"))], instance="a")
    config = config_for(tmp_path, pg_url, storage='retention = "30d"\ninstance = "a"')
    await run_policy(config, "storage.retention")
    left = await _pg_rows(pg_url, "SELECT session_id FROM frames ORDER BY id")
    assert left == [("theirs",)]
    assert await _pg_rows(pg_url, "SELECT id FROM sessions") == [("theirs",)]


async def test_partition_retention_never_drops_a_session_that_has_not_finished(
    pg_url: str, tmp_path: Path
) -> None:
    """A session seen only from its stream (no status: not finished, not active)
    began three months ago and streams today. Row by row, retention purges only
    finished sessions; the partition drop took its first months."""
    old = now_us() - 90 * DAY
    await _old_month(pg_url, old)
    url = _asyncpg(pg_url)
    await record(
        url,
        [(old, IN, chunk("streaming", "first words "))],
        [(now_us() - SECOND, IN, chunk("streaming", "latest words"))],
    )
    config = config_for(tmp_path, pg_url, storage='retention = "30d"')
    await run_policy(config, "storage.retention")
    left = await _pg_rows(pg_url, "SELECT count(*) FROM frames WHERE session_id = 'streaming'")
    assert left == [(2,)]


async def test_a_recorders_size_limit_never_purges_another_recorders_sessions(
    pg_url: str, tmp_path: Path
) -> None:
    """storage.max_db_size of recorder "a" purged the oldest finished sessions of the
    whole database (recorder.db.cleanup.oldest_finished has no instance condition):
    recorder b's session went, its own retention or policies notwithstanding."""
    url = _asyncpg(pg_url)
    t = now_us() - DAY
    await record(url, [(t, IN, status("theirs", "completed"))], instance="b")
    await record(url, [(t + SECOND, IN, status("mine", "completed"))], instance="a")
    config = config_for(tmp_path, pg_url, storage='max_db_size = "1MB"\ninstance = "a"')
    db, store, _ = await open_db(url, "a")
    try:
        await Cleanup(config, Direct(db, store), None).keep_under_size()
    finally:
        await db.shutdown()
    assert ("theirs",) in await _pg_rows(pg_url, "SELECT id FROM sessions")


async def test_max_db_size_on_postgresql_purges_only_the_excess_once(
    pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL's database size does not shrink when rows are deleted. The first
    run purges the excess; every later run (every 10 minutes) still sees the same
    size and purges another excess worth of the oldest sessions, with nothing new
    recorded, until no finished session is left."""
    url = _asyncpg(pg_url)
    t = now_us() - DAY
    script = []
    for n in range(10):
        script.append((t + n * 1000, IN, status(f"s{n}", "running")))
        script += [(t + n * 1000 + i, IN, chunk(f"s{n}", "z" * 2000)) for i in range(1, 101)]
        script.append((t + n * 1000 + 999, IN, status(f"s{n}", "completed")))
    await record(url, script)
    await _pg_rows(pg_url, "CHECKPOINT")
    ((size,),) = await _pg_rows(pg_url, "SELECT pg_database_size(current_database())")
    limit = size - 300_000  # about one and a half sessions' payloads over
    config = config_for(tmp_path, pg_url, storage=f'max_db_size = "{limit}B"')
    db, store, _ = await open_db(url)
    try:
        cleanup = Cleanup(config, Direct(db, store), None)
        await cleanup.keep_under_size()
        after_first = await _pg_rows(pg_url, "SELECT count(*) FROM sessions")
        await cleanup.keep_under_size()
        await cleanup.keep_under_size()
    finally:
        await db.shutdown()
    assert await _pg_rows(pg_url, "SELECT count(*) FROM sessions") == after_first
