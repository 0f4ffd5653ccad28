"""The same frames through the writer's own code into SQLite and PostgreSQL: every
column of every table the writer fills is equal. PostgreSQL takes the batches
together, as the database process does with batches that queued up: the rows are
those of batches written one at a time."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from recorder.db.connection import WriterDatabase
from recorder.db.migrations import upgrade_sync
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from tests.conversations import ONE_TASK_ODD_BYTES as FRAMES

Message = tuple[str, bytes, bool]

SID = "session_1795692537464_eeayv91i6"
START_US = 1_795_692_537_000_000


def sent(obj: dict[str, Any]) -> Message:
    return (OUT, json.dumps(obj).encode(), True)


def received(obj: dict[str, Any]) -> Message:
    return (IN, json.dumps(obj).encode(), True)


TASK = {"id": "task_1", "description": "D"}
# A UI spawns a session; it runs, streams and completes.
SPAWNED: list[Message] = [
    sent(
        {
            "type": "spawn_session",
            "payload": {"orchestratorId": "vp_1", "task": {"description": "D"}},
        }
    ),
    received(
        {
            "type": "session_status_update",
            "session": {
                "id": SID,
                "orchestratorId": "vp_1",
                "status": "running",
                "startedAt": "2026-11-26T11:28:57.464Z",
                "task": TASK,
            },
        }
    ),
    received({"type": "stream_chunk", "data": {"sessionId": SID, "chunk": "é 🎉"}}),
    received(
        {
            "type": "session_spawned",
            "session": {
                "id": SID,
                "orchestratorId": "vp_1",
                "status": "completed",
                "endedAt": "2026-11-26T11:28:58.000Z",
                "task": TASK,
            },
        }
    ),
]
NOT_FOUND: list[Message] = [
    sent({"type": "session_status", "payload": {"sessionId": "session_nope"}}),
    (IN, b'{"type":"error","error":"Session not found: session_nope"}', True),
]
# A known session changed by a frame that does not create one (an update), then news
# that must replace what is stored (status, error) beside news that must not (the
# first task's description).
UPDATED: list[Message] = [
    sent({"type": "execute_task", "payload": {"sessionId": "s1", "task": "Second"}}),
    received(
        {
            "type": "session_status_update",
            "session": {
                "id": "s1",
                "status": "failed",
                "task": {"id": "t1", "description": "Second"},
            },
        }
    ),
    received({"type": "task_failed", "sessionId": "s1", "taskId": "Second", "error": "boom"}),
]
# Strings no text column holds (NUL, lone surrogates): left out of the index, the
# frames kept.
UNSTORABLE: list[Message] = [
    (IN, b'{"type":"x\\u0000","sessionId":"s\\u0000","error":"\\ud800"}', True),
    (IN, b'{"type":"error","sessionId":"s1","error":"a\\u0000b"}', True),
]
# Stopped after it completed, and told so twice: it ended when it completed, on the
# recorder's clock (finished_us), whatever the daemon's endedAt says.
STOPPED = received(
    {
        "type": "session_status_update",
        "session": {"id": SID, "status": "stopped", "endedAt": "2126-01-01T00:00:00Z"},
    }
)
# A session that runs again after it ended (above): "running" and "completed" in one
# batch (of five, padded to start one), so it ended anew, not when it first did
# (recorder.protocol.deltas.finished_at). The poll and the reply repeating its status
# between them are not work (active_us); the chunk is.
AGAIN = {"type": "session_status_update", "session": {"id": SID, "status": "running"}}
DONE = {"type": "session_status_update", "session": {"id": SID, "status": "completed"}}
RAN_AGAIN: list[Message] = [
    received(AGAIN),
    sent({"type": "session_status", "payload": {"sessionId": SID}}),
    received(AGAIN),
    received({"type": "stream_chunk", "data": {"sessionId": SID}}),
    received(DONE),
]


def padded(frames: list[Message]) -> list[Message]:
    """``frames`` and pongs after them, up to a multiple of five (a batch's length)."""
    return frames + [(IN, b'{"type":"pong"}', True)] * (-len(frames) % 5)


CONVERSATION = [
    *padded([*FRAMES, *SPAWNED, *NOT_FOUND, *UPDATED, *UNSTORABLE, STOPPED, STOPPED]),
    *RAN_AGAIN,
]
TABLES = {
    "frames": "id",
    "sessions": "id",
    "tasks": "session_id, task_id",
    "connections": "id",
    "frame_days": "day_us, type, direction",
}


async def write(url: str, together: bool) -> None:
    """The conversation on one proxy connection, in batches of five; ``together``: the
    batches handed to the store two, then the rest, at once."""
    db = await WriterDatabase.open(url)
    await db.run(upgrade_sync)
    store = Store(db.dialect)
    cid = await db.run(store.open_connection, "proxy", "ws://x/", START_US, "127.0.0.1:1")
    classifier = Classifier()
    frames = [
        (cid, i, d, START_US + i, i, t, data) for i, (d, data, t) in enumerate(CONVERSATION, 1)
    ]
    # Several batches: attribution across them.
    batches = [
        classifier.rows_and_index(frames[start : start + 5]) for start in range(0, len(frames), 5)
    ]
    if together:
        await db.run(store.write_batches, batches[:2])
        await db.run(store.write_batches, batches[2:])
    else:
        for rows, index in batches:
            await db.run(store.write_batch, rows, index)
    await db.shutdown()


def normal(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


def from_sqlite(path: Path, table: str, order: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as lite:
        rows = lite.execute(f"SELECT * FROM {table} ORDER BY {order}")
        return [tuple(normal(v) for v in row) for row in rows]


async def from_postgres(pg_url: str, table: str, order: str) -> list[tuple[Any, ...]]:
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}")
        return [tuple(normal(v) for v in row.values()) for row in rows]
    finally:
        await conn.close()


def test_both_databases_hold_the_same_rows_for_the_same_conversation(
    pg_url: str, tmp_path: Path
) -> None:
    sqlite_path = tmp_path / "same.db"
    asyncio.run(write(f"sqlite+aiosqlite:///{sqlite_path}", together=False))
    asyncio.run(write(pg_url.replace("postgresql://", "postgresql+asyncpg://"), together=True))
    for table, order in TABLES.items():
        ours = from_sqlite(sqlite_path, table, order)
        theirs = asyncio.run(from_postgres(pg_url, table, order))
        assert ours == theirs, table
        assert ours, table


def test_a_session_that_ran_again_ended_with_its_last_frame(tmp_path: Path) -> None:
    """The recorder's clock: it ended (again) with the last frame, which said
    "completed" after "running" in the same batch; it was at work then too. (The
    PostgreSQL rows are these, above.)"""
    sqlite_path = tmp_path / "same.db"
    asyncio.run(write(f"sqlite+aiosqlite:///{sqlite_path}", together=False))
    with sqlite3.connect(sqlite_path) as lite:
        (finished, active) = lite.execute(
            "SELECT finished_us, active_us FROM sessions WHERE id = ?", (SID,)
        ).fetchone()
    assert finished == active == START_US + len(CONVERSATION)
