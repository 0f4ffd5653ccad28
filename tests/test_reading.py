"""The read side never holds the writer back: frames are read in short pages, no
snapshot is held while a reader prints or waits, and the WAL starts over behind a
follower (issue 17)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import signal
import sqlite3
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recorder.db import pages
from recorder.db.recordings import FrameFilter, Recordings
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from recorder.replay import source
from tests.helpers import writer_database

T0_US = 1_795_692_537_000_000
SID = "session_1795692537464_reading"
TIMEOUT = 20


def chunk(i: int, pad: int = 0, sid: str = SID) -> bytes:
    data = {"sessionId": sid, "chunk": f"{i} " + "x" * pad}
    return json.dumps({"type": "stream_chunk", "data": data}).encode()


def status(state: str, sid: str = SID) -> bytes:
    return json.dumps(
        {"type": "session_status_update", "session": {"id": sid, "status": state}}
    ).encode()


async def fill(url: str, frames: list[tuple[str, bytes]], step_us: int = 1000) -> None:
    """``frames`` (direction, data) recorded by the writer's own code on one link."""
    db, store, cid = await writer_database(url)
    classifier = Classifier()
    rows = [
        (cid, i, d, T0_US + i * step_us, i * step_us * 1000, True, data)
        for i, (d, data) in enumerate(frames, 1)
    ]
    for start in range(0, len(rows), 500):
        batch, index = classifier.rows_and_index(rows[start : start + 500])
        await db.run(store.write_batch, batch, index)
    await db.shutdown()


def a_session(count: int, pad: int = 0) -> list[tuple[str, bytes]]:
    """A session's frames, interleaved with another session's and with requests."""
    frames = [(IN, status("running"))]
    for i in range(count):
        frames.append((IN, chunk(i, pad)))
        if i % 3 == 0:
            frames.append((IN, chunk(i, sid="session_other")))
        if i % 7 == 0:
            ask = {"type": "session_status", "payload": {"sessionId": SID}}
            frames.append((OUT, json.dumps(ask).encode()))
    frames.append((IN, status("completed")))
    return frames


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    path = tmp_path / "reading.db"
    asyncio.run(fill(f"sqlite+aiosqlite:///{path}", a_session(2500, pad=200)))
    return path


def readers_on_the_wal(path: Path) -> bool:
    """Whether a reader still holds a snapshot in the WAL: a RESTART checkpoint that
    may not wait for one says so."""
    conn = sqlite3.connect(path, timeout=0)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        return bool(busy)
    finally:
        conn.close()


def writer_on(path: Path) -> sqlite3.Connection:
    """A connection that keeps the file in WAL mode and writes to the WAL on demand:
    a reader that starts then reads from the WAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
    return conn


READS: dict[str, Callable[[Recordings], Iterator[Any]]] = {
    "frames": lambda r: r.frames(FrameFilter()),
    "frames --session": lambda r: r.frames(FrameFilter(session_id=SID)),
    "frames --last": lambda r: r.frames(FrameFilter(last=3000)),
    "frames --grep": lambda r: r.frames(FrameFilter(grep="xxxx")),
    "replay": lambda r: source.frames(r, source.open_session(r, SID)),
    "replay --follow": lambda r: source.frames(r, source.open_session(r, SID), follow=True),
}


@pytest.mark.parametrize("how", list(READS))
def test_a_reader_holds_no_snapshot_while_its_caller_holds_a_frame(
    recorded: Path, how: str
) -> None:
    """Today's main held one statement open from the first frame to the last, so
    a caller that printed them (tail, frames, replay) kept the WAL from starting over."""
    writer = writer_on(recorded)
    reader = Recordings.open(f"sqlite:///{recorded}")
    try:
        frames = READS[how](reader)
        taken = 0
        for _ in range(2):  # within the first page, then past it
            writer.execute("INSERT INTO scratch VALUES (1)")  # new frames in the WAL
            for _ in range(1 if taken == 0 else 1200):
                next(frames)
                taken += 1
            assert not readers_on_the_wal(recorded), f"after {taken} frames"
    finally:
        reader.close()
        writer.close()


def brute(rows: list[sqlite3.Row], f: FrameFilter) -> list[int]:
    """The ids a filter selects, by reading every row."""
    ids = [
        r["id"]
        for r in rows
        if (f.session_id is None or r["session_id"] == f.session_id)
        and (f.type is None or r["type"] == f.type)
        and (f.direction is None or r["direction"] == f.direction)
        and (f.since_us is None or r["received_at_us"] >= f.since_us)
        and (f.until_us is None or r["received_at_us"] < f.until_us)
        and (f.grep is None or f.grep in (r["payload"] or ""))
        and (f.after_id is None or r["id"] > f.after_id)
        and (f.through_id is None or r["id"] <= f.through_id)
    ]
    if f.last:
        ids = ids[-f.last :]
    return ids[: f.limit] if f.limit else ids


def test_pages_select_what_one_statement_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small pages and windows, so that every filter crosses many of both; some ids
    purged, so that windows and the search for a moment meet holes."""
    path = tmp_path / "pages.db"
    asyncio.run(fill(f"sqlite+aiosqlite:///{path}", a_session(300), step_us=997))
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM frames WHERE id BETWEEN 40 AND 90 OR id % 11 = 0")
    monkeypatch.setattr(pages, "PAGE_ROWS", 7)
    monkeypatch.setattr(pages, "ID_WINDOW", 13)
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    every = conn.execute("SELECT * FROM frames ORDER BY id").fetchall()
    conn.close()
    middle = every[len(every) // 2]["received_at_us"]
    cases = [
        FrameFilter(),
        FrameFilter(session_id=SID),
        FrameFilter(session_id="session_other", limit=25),
        FrameFilter(direction=OUT),
        FrameFilter(type="session_status_update"),
        FrameFilter(grep='"chunk": "1'),
        FrameFilter(since_us=middle + 1),
        FrameFilter(until_us=middle, session_id=SID),
        FrameFilter(since_us=T0_US + 50_000, until_us=middle, direction=IN),
        FrameFilter(last=30),
        FrameFilter(last=30, session_id="session_other", through_id=300),
        FrameFilter(after_id=100, through_id=260, grep="x"),
        FrameFilter(session_id="no such session"),
        FrameFilter(since_us=T0_US * 2),
    ]
    reader = Recordings.open(f"sqlite:///{path}")
    try:
        for f in cases:
            assert [r.id for r in reader.frames(f)] == brute(every, f), f
    finally:
        reader.close()


def test_a_page_of_large_frames_stops_at_its_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "large.db"
    asyncio.run(fill(f"sqlite+aiosqlite:///{path}", a_session(40, pad=10_000)))
    monkeypatch.setattr(pages, "PAGE_BYTES", 50_000)
    reader = Recordings.open(f"sqlite:///{path}")
    try:
        sizes = [
            sum(r["size"] for r in rows) for rows in pages.frame_pages(reader.reader, FrameFilter())
        ]
        everything = [r.id for r in reader.frames(FrameFilter())]
    finally:
        reader.close()
    assert len(sizes) > 5 and max(sizes) < 50_000 + 10_200
    assert len(everything) == len(set(everything)) == 40 + 14 + 6 + 2


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


TAIL_ARGS = ("--format", "jsonl", "--last", "0")
COPY = (
    "connection_id, seq, direction, received_at_us, monotonic_ns, opcode, size, type, "
    "session_id, task_id, parse_error, payload, payload_bytes"
)


def waiting_in(pid: int, call: str) -> bool:
    """Whether the process sleeps in this kernel function (/proc/PID/wchan)."""
    try:
        return call in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def wait_for(proc: subprocess.Popen[bytes], call: str) -> None:
    until = time.monotonic() + TIMEOUT
    while not waiting_in(proc.pid, call):
        assert proc.poll() is None and time.monotonic() < until, f"not in {call}"
        time.sleep(0.01)


def test_tail_blocked_on_its_output_holds_no_snapshot(recorded: Path) -> None:
    """`recorder tail` printing frames committed after it started, to a reader that
    does not keep up (a terminal, a pipe): on today's main it sat in write() inside
    the statement that read them."""
    writer = writer_on(recorded)
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", "tail", "--database", str(recorded), *TAIL_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        wait_for(proc, "nanosleep")  # it knows where the file ends, and polls
        before = read_newest(recorded)
        # As many frames again, committed to the WAL: 4 MB for a 64 kB pipe.
        writer.execute(
            f"INSERT INTO frames ({COPY}) SELECT {COPY.replace('seq', 'seq + 1000000', 1)} "
            "FROM frames ORDER BY id"
        )
        wait_for(proc, "pipe_write")
        waiting = bytearray(4)
        fcntl.ioctl(proc.stdout.fileno(), termios.FIONREAD, waiting)
        assert int.from_bytes(waiting, sys.byteorder) > 60_000  # a full pipe
        assert not readers_on_the_wal(recorded)
        # Then it prints the rest as its reader takes it.
        ids = [json.loads(proc.stdout.readline())["id"] for _ in range(before)]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
        writer.close()
    assert ids == list(range(before + 1, 2 * before + 1))
    assert err == b""


def read_newest(path: Path) -> int:
    reader = Recordings.open(f"sqlite:///{path}")
    try:
        return reader.newest_frame_id()
    finally:
        reader.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of its own on the PostgreSQL at 127.0.0.1:5432 (skipped without)."""
    import asyncpg

    name = f"recorder_reading_{__import__('os').getpid()}"
    admin = "postgresql://postgres@127.0.0.1:5432/test"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}"'))
        asyncio.run(run(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError) as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_postgres_is_read_in_pages_with_no_transaction_left_open(pg_url: str) -> None:
    """On today's main a long read held a transaction open over a cursor while its
    caller printed (vacuum cannot clean up behind it); the pages' byte budget is
    cut in SQL there."""
    import asyncpg

    frames = a_session(1500, pad=3000)
    asyncio.run(fill(pg_url.replace("postgresql://", "postgresql+asyncpg://"), frames))

    async def state(pid: int) -> str:
        conn = await asyncpg.connect(pg_url, timeout=5)
        try:
            return str(
                await conn.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
            )
        finally:
            await conn.close()

    reader = Recordings.open(pg_url)
    try:
        pid = reader.reader.conn.get_server_pid()  # type: ignore[attr-defined]
        reading = reader.frames(FrameFilter(session_id=SID))
        first = next(reading)
        assert asyncio.run(state(pid)) == "idle"
        rest = list(reading)
        pages_read = list(pages.frame_pages(reader.reader, FrameFilter(session_id=SID)))
    finally:
        reader.close()
    ids = [first.id] + [r.id for r in rest]
    assert len(ids) == sum(SID.encode() in data for _, data in frames) and ids == sorted(ids)
    # 3 kB frames: a page stops near 4 MiB, not at 1000 frames.
    assert max(len(p) for p in pages_read) < 1400 and len(pages_read) >= 2
