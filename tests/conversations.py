"""Conversations the tests record through the real writer: frames as a daemon and a
UI exchanged them, and a database filled with them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, OUT, Frame

T0 = 1_795_692_537_000_000  # 2026-11-26T11:28:57Z
S1 = "session_1795692537464_eeayv91i6"
S2 = "session_1795692599999_zzzzzzzzz"

# (direction, data, is_text): S1 runs a task and streams; S2 failed; then a binary
# frame and text that is not UTF-8.
TWO_SESSIONS: list[tuple[str, bytes, bool]] = [
    (IN, b'{"type":"health_check_response","healthy":true}', True),
    (
        OUT,
        json.dumps(
            {"type": "execute_task", "payload": {"sessionId": S1, "task": "Analyze"}}
        ).encode(),
        True,
    ),
    (
        IN,
        json.dumps(
            {
                "type": "session_status_update",
                "session": {
                    "id": S1,
                    "status": "running",
                    "type": "claude-code",
                    "task": {"id": "task_1", "description": "Implement feature X"},
                },
            }
        ).encode(),
        True,
    ),
    (
        IN,
        json.dumps({"type": "task_executing", "sessionId": S1, "taskId": "Analyze"}).encode(),
        True,
    ),
    (
        IN,
        json.dumps(
            {"type": "stream_chunk", "data": {"sessionId": S1, "chunk": "Here\nis"}}
        ).encode(),
        True,
    ),
    (
        IN,
        json.dumps({"type": "task_completed", "sessionId": S1, "taskId": "Analyze"}).encode(),
        True,
    ),
    (
        IN,
        json.dumps(
            {"type": "session_status_update", "session": {"id": S2, "status": "failed"}}
        ).encode(),
        True,
    ),
    (IN, b"\x00\x01\x02binary", False),
    (IN, b"\xff\xfe", True),
]

# One session's task among frames no text column holds (a NUL, invalid UTF-8,
# binary), and an empty sessions_list last.
ONE_TASK_ODD_BYTES: list[tuple[str, bytes, bool]] = [
    (IN, b'{"type":"health_check_response","healthy":true}', True),
    (
        IN,
        json.dumps(
            {
                "type": "session_status_update",
                "session": {
                    "id": "s1",
                    "status": "running",
                    "task": {"id": "t1", "description": "d"},
                },
            }
        ).encode(),
        True,
    ),
    (
        OUT,
        json.dumps(
            {"type": "execute_task", "payload": {"sessionId": "s1", "task": "Analyze"}}
        ).encode(),
        True,
    ),
    (
        IN,
        json.dumps({"type": "task_completed", "sessionId": "s1", "taskId": "Analyze"}).encode(),
        True,
    ),
    (IN, b'{"type":"x","nul":"\x00"}', True),
    (IN, b"\xff\xfe", True),
    (IN, b"\x00binary", False),
    (IN, json.dumps({"type": "sessions_list", "sessions": []}).encode(), True),
]


def fill(path: Path, frames: list[tuple[str, bytes, bool]] = TWO_SESSIONS) -> None:
    """``frames`` recorded through the real writer into the SQLite file ``path``, on one
    link connection left open, a minute apart from T0."""

    async def record() -> None:
        writer = Writer(f"sqlite+aiosqlite:///{path}")
        await writer.start()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://127.0.0.1:8787")
        for i, (direction, data, is_text) in enumerate(frames, 1):
            await writer.put(Frame(cid, i, direction, T0 + i * 60_000_000, i, is_text, data))
        writer.stop()
        await task
        await writer.close()

    asyncio.run(record())
