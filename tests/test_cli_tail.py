"""`recorder tail` as a real process following a database the real writer fills:
`--format json` is JSON lines, and `--session` prints the spawn request the moment
the writer attributes it to the session (when session_spawned comes, long after the
request was committed)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, OUT, Frame
from tests.postmortem_recording import spawn_request

TIMEOUT = 20
T0 = 1_795_692_537_000_000
SESSION = "session_1795692537464_tailtail1"


def status(status: str) -> bytes:
    session = {"id": SESSION, "status": status, "task": {"description": "Tail me"}}
    return json.dumps({"type": "session_status_update", "session": session}).encode()


SPAWNED = json.dumps(
    {
        "type": "session_spawned",
        "session": {"id": SESSION, "status": "completed", "task": {"description": "Tail me"}},
    }
).encode()


async def tail(db: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recorder",
        "tail",
        "--database",
        db,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(TIMEOUT):
        text = await proc.stdout.readline()
    assert text, "tail ended"
    found: dict[str, Any] = json.loads(text)
    return found


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or a PostgreSQL database (ids commit out of order there: the
    follower reads a window behind what it has seen)."""
    if request.param == "sqlite":
        return str(tmp_path / "recorder.db")
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_tail_session_prints_the_spawn_once_it_is_attributed(database: str) -> None:
    db = database
    if "://" in database:
        writer = Writer(database.replace("postgresql://", "postgresql+asyncpg://"))
    else:
        writer = Writer(f"sqlite+aiosqlite:///{database}")
    await writer.start()
    running = asyncio.create_task(writer.run())
    procs: list[asyncio.subprocess.Process] = []
    try:
        cid = await writer.open_connection("proxy", "ws://127.0.0.1:8787", "127.0.0.1:5000")
        spawn = json.dumps(spawn_request("vp", "Tail me")).encode()
        # The UI asks, and the daemon lists the new session while the spawn runs.
        await writer.put(Frame(cid, 1, OUT, T0, 1, True, spawn))
        await writer.put(Frame(cid, 2, IN, T0 + 1_000, 2, True, status("running")))
        await writer.flush()
        # Following from here (the newest of the session: its status); as the JSON
        # lines --format json means for a stream, and by a start of the session's id.
        procs = [
            await tail(db, "--session", SESSION[:24], "--last", "1", "--format", "json"),
            await tail(db, "--session", SESSION[:24], "--last", "1", "--json"),
        ]
        for proc in procs:
            assert (await line(proc))["type"] == "session_status_update"
        await writer.put(Frame(cid, 3, IN, T0 + 2_000, 3, True, SPAWNED))
        await writer.flush()
        for proc in procs:
            spawned, reply = await line(proc), await line(proc)
            assert (spawned["type"], spawned["session_id"], spawned["seq"]) == (
                "spawn_session",
                SESSION,
                1,
            )
            assert json.loads(spawned["payload"]) == json.loads(spawn)
            assert (reply["type"], reply["seq"]) == ("session_spawned", 3)
        # Once: the next look does not print the request again.
        await writer.put(Frame(cid, 4, IN, T0 + 3_000, 4, True, status("stopped")))
        await writer.flush()
        for proc in procs:
            assert (await line(proc))["seq"] == 4
    finally:
        for proc in procs:
            proc.kill()
            await proc.wait()
        writer.stop()
        await running
        await writer.close()
