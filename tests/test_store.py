"""The writer's database on a real SQLite file: multi-row inserts, checkpoints, WAL size."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from recorder.db.migrations import upgrade_sync
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.db.write import SQLITE_ROWS_PER_INSERT, Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN


def batch(start: int, count: int, size: int) -> list[tuple[int, int, str, int, int, bool, bytes]]:
    pad = "x" * max(size - 80, 0)
    return [
        (
            1,
            seq,
            IN,
            1_000_000 + seq,
            seq,
            True,
            f'{{"type":"stream_chunk","data":{{"sessionId":"s1","chunk":"{pad}","i":{seq}}}}}'.encode(),
        )
        for seq in range(start, start + count)
    ]


async def open_db(db_path: Path, **options: int) -> tuple[SqliteWriterDatabase, Store]:
    db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{db_path}", **options)
    await db.connect()
    await db.run(upgrade_sync)
    await db.run(Store(db.dialect).open_connection, "link", "ws://x", 1)
    return db, Store(db.dialect)


def stored(db_path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db_path) as conn:
        return list(conn.execute("select seq, payload from frames order by id"))


async def test_batches_larger_than_one_statement_keep_every_row_in_order(db_path: Path) -> None:
    db, store = await open_db(db_path)
    frames = batch(1, SQLITE_ROWS_PER_INSERT * 2 + 37, 100)
    rows, index = Classifier().rows_and_index(frames)
    await db.run(store.write_batch, rows, index)
    await db.shutdown()
    assert stored(db_path) == [(f[1], f[6].decode()) for f in frames]


async def test_checkpoints_run_beside_the_writer_and_the_wal_stays_bounded(
    db_path: Path,
) -> None:
    kib = 1024
    db, store = await open_db(db_path, checkpoint_bytes=256 * kib, restart_bytes=1024 * kib)
    wal = Path(f"{db_path}-wal")
    wal_sizes = []
    seq = 1
    for _ in range(40):  # 40 batches of 50 frames of 8 KiB: about 16 MiB in all
        frames = batch(seq, 50, 8 * kib)
        seq += len(frames)
        rows, index = Classifier().rows_and_index(frames)
        await db.run(store.write_batch, rows, index)
        db.wrote(rows)
        wal_sizes.append(wal.stat().st_size)
    await db.settle()
    assert db.checkpoints >= 10
    # The database file took the pages while the WAL started over: without the
    # catch-up it grows to the whole 16 MiB, and without checkpoints the file stays empty.
    assert db_path.stat().st_size > 12 * 1024 * kib
    assert max(wal_sizes) < 3 * 1024 * kib
    await db.shutdown()
    assert [s for s, _ in stored(db_path)] == list(range(1, seq))


async def test_migration_0007_gives_old_sessions_the_instance_that_recorded_them(
    db_path: Path,
) -> None:
    """A database shared by named recorders before sessions knew their instance: each
    session takes the instance of the connection that carried its first frame."""
    db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{db_path}")
    await db.connect()
    await db.run(upgrade_sync, "0006")
    with sqlite3.connect(db_path) as conn:
        conn.executescript(
            """
            INSERT INTO connections (id, role, url, opened_at_us, instance)
                VALUES (1, 'link', 'ws://a', 1, 'a'), (2, 'link', 'ws://b', 1, 'b');
            INSERT INTO frames (connection_id, seq, direction, received_at_us, monotonic_ns,
                                opcode, size, session_id)
                VALUES (2, 1, 'in', 1, 1, 1, 2, 's-b'), (1, 1, 'in', 2, 2, 1, 2, 's-a'),
                       (2, 2, 'in', 3, 3, 1, 2, 's-a');
            INSERT INTO sessions (id, first_seen_us, last_seen_us)
                VALUES ('s-a', 1, 3), ('s-b', 1, 1), ('s-none', 1, 1);
            """
        )
    await db.run(upgrade_sync)
    await db.shutdown()
    with sqlite3.connect(db_path) as conn:
        found = dict(conn.execute("select id, instance from sessions"))
    assert found == {"s-a": "a", "s-b": "b", "s-none": "default"}


async def test_the_wal_growth_of_batches_is_not_counted_twice(db_path: Path) -> None:
    """changed() measures the WAL after work whose size is not known in advance (a
    purge, a vacuum step); batches written since the last look grew it too, and
    wrote() had counted them already. Counted twice, checkpoints came more often than
    one per ``checkpoint_bytes`` of WAL."""
    mib = 1024 * 1024
    db, store = await open_db(db_path, checkpoint_bytes=mib, restart_bytes=64 * mib)
    wal = Path(f"{db_path}-wal")
    seq = 1
    for _ in range(6):  # 6 batches of 50 frames of 2 KiB, a look at the WAL after each
        frames = batch(seq, 50, 2048)
        seq += len(frames)
        rows, index = Classifier().rows_and_index(frames)
        await db.run(store.write_batch, rows, index)
        db.wrote(rows)
        db.changed()  # as after a purge step that wrote nothing
    await db.settle()
    written = wal.stat().st_size  # checkpoints are passive: the WAL never started over
    checkpoints = db.checkpoints
    await db.shutdown()
    assert written > mib and checkpoints == written // mib
