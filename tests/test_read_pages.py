"""The read side never holds the writer back: frames are read in short pages, and no
snapshot (no transaction, on PostgreSQL) is held while a reader prints or waits
(issue 17). tests/test_wal_restart.py holds the WAL starting over behind readers."""

from __future__ import annotations

import asyncio
import fcntl
import json
import signal
import sqlite3
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recorder.db import pages
from recorder.db.recordings import FrameFilter, Recordings
from recorder.protocol.frames import IN, OUT
from recorder.replay import source
from tests.reading_session import SID, T0_US, a_session, fill

TIMEOUT = 20


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
