"""The writer against a real SQLite file: batching, flush, back-pressure, exact bytes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, select, text

from recorder.db.engine import create_engine
from recorder.db.migrations import upgrade
from recorder.db.schema import frames, metadata, sessions
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, OUT, Frame


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite+aiosqlite:///{db_path}"


@pytest.fixture
async def started(url: str) -> AsyncIterator[Callable[..., Awaitable[Writer]]]:
    """Start writers (real child processes) with given options; stop them afterwards."""
    writers: list[Writer] = []

    async def start(**options: Any) -> Writer:
        writer = Writer(url, **options)
        await writer.start()
        writers.append(writer)
        return writer

    yield start
    for writer in writers:
        await writer.close()


Running = Callable[..., Awaitable[tuple[Writer, asyncio.Task[None], int]]]


@pytest.fixture
def running(started: Callable[..., Awaitable[Writer]]) -> Running:
    """A started writer, its run() task, and a link connection row to put frames on."""

    async def start(**options: Any) -> tuple[Writer, asyncio.Task[None], int]:
        writer = await started(**options)
        task = asyncio.create_task(writer.run())
        return writer, task, await writer.open_connection("link", "ws://x")

    return start


def mk(
    cid: int, seq: int, data: bytes, *, direction: str = IN, is_text: bool = True, at: int = 0
) -> Frame:
    return Frame(cid, seq, direction, at or 1_000_000 + seq, time.monotonic_ns(), is_text, data)


# (seq, direction, payload, payload_bytes, parse_error) of a stored frame.
StoredFrame = tuple[int, str, str | None, bytes | None, str | None]


async def rows(url: str) -> list[StoredFrame]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                select(
                    frames.c.seq,
                    frames.c.direction,
                    frames.c.payload,
                    frames.c.payload_bytes,
                    frames.c.parse_error,
                ).order_by(frames.c.id)
            )
            return [(r.seq, r.direction, r.payload, r.payload_bytes, r.parse_error) for r in result]
    finally:
        # Undisposed, its pooled aiosqlite connection was closed by the garbage
        # collector after the test's loop had closed: a worker thread's "Event loop is
        # closed" warning in whichever test was running then.
        await engine.dispose()


async def test_migrations_match_the_models(url: str) -> None:
    def diff(conn: Connection) -> list[object]:
        diffs: list[object] = compare_metadata(MigrationContext.configure(conn), metadata)
        return diffs

    engine = create_engine(url)
    await upgrade(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
    await engine.dispose()
    assert mode == "wal"


async def test_frames_are_stored_byte_exact(running: Running, url: str) -> None:
    writer, task, cid = await running(commit_interval=10)
    payloads = [
        (b'{ "type":"a",\t"type":"b", "s":"\\ud83d" }', True),
        (b'{"type":"x","v":"\x00"}', True),
        (b"\xff\xfe\x00", True),
        (b"\x00\x01\x02", False),
        ("héllo 🎉".encode(), True),  # not JSON, but text
        (b"[" * 50_000 + b"]" * 50_000, True),
    ]
    for i, (data, is_text) in enumerate(payloads, 1):
        await writer.put(mk(cid, i, data, is_text=is_text))
    await writer.flush()
    stored = await rows(url)
    assert len(stored) == len(payloads)
    for (data, _is_text), (_seq, _dir, payload, payload_bytes, _err) in zip(
        payloads, stored, strict=True
    ):
        got = payload.encode() if payload is not None else payload_bytes
        assert got == data
    assert [r[4] for r in stored] == [
        None,
        "invalid_json",
        "invalid_utf8",
        "binary",
        "invalid_json",
        "too_deep",
    ]
    writer.stop()
    await task


async def test_commits_when_batch_is_full_without_waiting_for_the_interval(
    running: Running, url: str
) -> None:
    writer, task, cid = await running(batch_size=10, commit_interval=60)
    for i in range(25):
        await writer.put(mk(cid, i, b"{}"))
    async with asyncio.timeout(5):  # far below the 60 s interval
        while writer.committed < 20:
            await writer.wait_commit()
        # Two full batches were a burst: its last 5 frames follow once it is over.
        while writer.committed < 25:
            await writer.wait_commit()
    assert len(await rows(url)) == 25
    writer.stop()
    await task


async def test_a_trickle_waits_for_the_interval_not_for_a_pause(running: Running, url: str) -> None:
    writer, task, cid = await running(batch_size=10, commit_interval=60)
    commits = writer.commits
    for i in range(5):
        await writer.put(mk(cid, i, b"{}"))
    # No burst came before: a commit per interval, however quiet the link is
    # (BURST_END_QUIET is 10 ms; this waits 30 times that).
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await writer.wait_commit()
    assert writer.committed == 0 and writer.commits == commits
    await writer.flush()
    assert writer.committed == 5
    writer.stop()
    await task


async def test_commits_after_the_interval_when_the_batch_is_not_full(
    running: Running, url: str
) -> None:
    writer, task, cid = await running(batch_size=1000, commit_interval=0.05)
    commits = writer.commits
    for i in range(3):
        await writer.put(mk(cid, i, b"{}"))
    async with asyncio.timeout(5):
        await writer.wait_commit()
    assert writer.committed == 3 and writer.commits == commits + 1
    writer.stop()
    await task


async def test_full_queue_pushes_back_and_loses_nothing(
    started: Callable[..., Awaitable[Writer]], url: str
) -> None:
    writer = await started(batch_size=2, commit_interval=0.01, queue_max_frames=5)
    cid = await writer.open_connection("link", "ws://x")
    for i in range(5):
        await writer.put(mk(cid, i, b"{}"))
    blocked = asyncio.create_task(writer.put(mk(cid, 5, b"{}")))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done() and writer.queue.waits == 1
    task = asyncio.create_task(writer.run())
    async with asyncio.timeout(5):
        await blocked
    await writer.flush()
    assert [r[0] for r in await rows(url)] == list(range(6))
    writer.stop()
    await task


async def test_queue_is_bounded_in_bytes_but_admits_one_huge_frame(
    started: Callable[..., Awaitable[Writer]], url: str
) -> None:
    writer = await started(queue_max_frames=1000, queue_max_bytes=1000)
    cid = await writer.open_connection("link", "ws://x")
    await writer.put(mk(cid, 1, b"x" * 5000))  # bigger than the bound, queue empty: admitted
    blocked = asyncio.create_task(writer.put(mk(cid, 2, b"{}")))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done()
    task = asyncio.create_task(writer.run())
    async with asyncio.timeout(5):
        await blocked
        await writer.flush()
    writer.stop()
    await task
    assert writer.committed == 2


async def test_index_heals_from_sessions_list(running: Running, url: str) -> None:
    writer, task, cid = await running(commit_interval=10)

    def status(sid: str, st: str) -> bytes:
        return json.dumps(
            {"type": "session_status_update", "session": {"id": sid, "status": st}}
        ).encode()

    await writer.put(mk(cid, 1, status("s1", "running"), at=100))
    await writer.put(mk(cid, 2, status("s2", "running"), at=100))
    await writer.put(mk(cid, 3, status("s3", "completed"), at=100))
    await writer.flush()
    assert sorted(await writer.active_session_ids()) == ["s1", "s2"]
    listing = json.dumps(
        {"type": "sessions_list", "sessions": [{"id": "s2", "status": "running"}]}
    ).encode()
    await writer.put(mk(cid, 4, b'{"type":"list_sessions"}', direction=OUT, at=200))
    await writer.put(mk(cid, 5, listing, at=201))
    await writer.flush()
    engine = create_engine(url)
    async with engine.connect() as conn:
        got = dict((await conn.execute(select(sessions.c.id, sessions.c.status))).all())
    await engine.dispose()
    assert got == {"s1": "unknown", "s2": "running", "s3": "completed"}
    writer.stop()
    await task


async def test_index_accumulates_across_batches(running: Running, url: str) -> None:
    writer, task, cid = await running(batch_size=1, commit_interval=10)
    frames_ = [
        {
            "type": "session_status_update",
            "session": {
                "id": "s",
                "status": "running",
                "task": {"id": "t0", "description": "first"},
            },
        },
        {"type": "stream_chunk", "data": {"sessionId": "s", "chunk": "a"}},
        {"type": "task_executing", "sessionId": "s", "taskId": "second"},
        {"type": "task_completed", "sessionId": "s", "taskId": "second"},
        {
            "type": "session_status_update",
            "session": {
                "id": "s",
                "status": "completed",
                "task": {"id": "t0"},
                "endedAt": "2026-11-26T11:28:57.467Z",
            },
        },
    ]
    for i, f in enumerate(frames_):
        await writer.put(mk(cid, i, json.dumps(f).encode(), at=1000 + i))
    await writer.flush()
    engine = create_engine(url)
    async with engine.connect() as conn:
        s = (await conn.execute(select(sessions))).one()
        t: dict[str, str] = dict(
            (await conn.execute(text("select task_id, status from tasks order by task_id"))).all()
        )
        conn_row = (await conn.execute(text("select frame_count from connections"))).scalar()
    await engine.dispose()
    assert (s.status, s.frame_count, s.first_seen_us, s.last_seen_us) == (
        "completed",
        5,
        1000,
        1004,
    )
    assert s.task_description == "first" and s.ended_at_us == 1795692537467000
    assert t == {"second": "completed", "t0": "completed"}
    assert conn_row == 5
    assert writer.commits >= 5
    writer.stop()
    await task
