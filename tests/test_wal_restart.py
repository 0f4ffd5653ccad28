"""The WAL starts over behind the read side (issue 17): behind a follower that lags,
after waiting for a reader in the middle of a page, and at little cost to the writer
when a reader holds on."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recorder.db.recordings import FrameFilter, Recordings
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN
from tests.reading_session import T0_US, chunk


async def test_the_wal_starts_over_behind_a_follower_that_lags(db_path: Path) -> None:
    """A follower reading a little after every batch, as `recorder tail` behind a
    firehose: on today's main its open statement kept the WAL from starting over,
    and it grew with every batch (here to 16 MiB, against a bound of 1 MiB)."""
    kib = 1024
    db = SqliteWriterDatabase(
        f"sqlite+aiosqlite:///{db_path}", checkpoint_bytes=256 * kib, restart_bytes=1024 * kib
    )
    await db.connect()
    from recorder.db.migrations import upgrade_sync
    from recorder.db.write import Store

    await db.run(upgrade_sync)
    store = Store(db.dialect)
    cid = await db.run(store.open_connection, "link", "ws://x", 1)
    classifier = Classifier()
    reader = Recordings.open(f"sqlite:///{db_path}")
    wal = Path(f"{db_path}-wal")
    seen, printed, sizes = 0, 0, []
    following: Iterator[Any] | None = None
    try:
        for n in range(40):  # 40 batches of 50 frames of 8 KiB
            frames = [
                (cid, n * 50 + i, IN, T0_US + i, i, True, chunk(i, pad=8 * kib))
                for i in range(1, 51)
            ]
            rows, index = classifier.rows_and_index(frames)
            await db.run(store.write_batch, rows, index)
            db.wrote(rows)
            taken = 0
            while taken < 30:  # slower than the batches come
                if following is None:
                    newest = reader.newest_frame_id()
                    span = FrameFilter(after_id=seen, through_id=newest)
                    following, seen = reader.frames(span), newest
                if next(following, None) is None:
                    following = None
                else:
                    taken += 1
            printed += taken
            sizes.append(wal.stat().st_size)
        await db.settle()
    finally:
        reader.close()
        await db.shutdown()
    assert printed == 40 * 30 and db.restarts_missed == 0
    assert max(sizes) < 3 * 1024 * kib, sizes


class Batches:
    """Batches of 150 frames of 8 kB (1.2 MB) by the writer's own code, counted as the
    database process counts them (what decides when the WAL is to start over)."""

    def __init__(self, path: Path, **options: int) -> None:
        self.path = path
        self.db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{path}", **options)
        self.seq = 0

    async def open(self) -> None:
        from recorder.db.migrations import upgrade_sync
        from recorder.db.write import Store

        await self.db.connect()
        await self.db.run(upgrade_sync)
        self.store = Store(self.db.dialect)
        self.cid = await self.db.run(self.store.open_connection, "link", "ws://x", 1)

    async def write(self) -> int:
        """One batch; the WAL's size after it."""
        frames = [
            (self.cid, self.seq + i, IN, T0_US, i, True, chunk(i, pad=8 * 1024))
            for i in range(1, 151)
        ]
        self.seq += 150
        rows, index = Classifier().rows_and_index(frames)
        await self.db.run(self.store.write_batch, rows, index)
        self.db.wrote(rows)
        return Path(f"{self.path}-wal").stat().st_size

    def reading(self) -> sqlite3.Connection:
        """A reader in the middle of a read: a snapshot in the WAL, held."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM frames").fetchone()
        return conn


async def test_the_catch_up_waits_for_a_reader_in_the_middle_of_a_page(db_path: Path) -> None:
    """Every restart_bytes the writer checkpoints what is left so that the WAL starts
    over. On today's main a passive checkpoint gave up at once on a reader still in
    the WAL, and the WAL grew on for another restart_bytes."""
    batches = Batches(db_path, restart_bytes=1024, reader_wait_ms=2000)
    await batches.open()
    try:
        one_batch = await batches.write()  # past restart_bytes: the next one catches up
        short = batches.reading()
        threading.Timer(0.03, short.rollback).start()  # the page is read
        assert await batches.write() < 1.5 * one_batch  # started over
        assert batches.db.restarts_missed == 0
        short.close()
    finally:
        await batches.db.shutdown()


async def test_a_reader_that_holds_on_costs_the_writer_little(db_path: Path) -> None:
    """One that holds its snapshot past the wait (20 ms) is not waited for again: the
    catch-up is tried after an eighth of restart_bytes, not another restart_bytes (on
    today's main, the WAL grew to twice the bound and more)."""
    mib = 1024 * 1024
    batches = Batches(db_path, restart_bytes=4 * mib)
    await batches.open()
    try:
        sizes = [await batches.write() for _ in range(4)]  # 4.8 MB: the catch-up is due
        stuck = batches.reading()
        started = time.monotonic()
        sizes.append(await batches.write())
        assert time.monotonic() - started < 1.0 and batches.db.restarts_missed == 1
        stuck.close()
        sizes += [await batches.write() for _ in range(4)]
        assert batches.db.restarts_missed == 1
    finally:
        await batches.db.shutdown()
    assert sizes[-1] < sizes[4] and max(sizes) < 7.5 * mib, sizes
