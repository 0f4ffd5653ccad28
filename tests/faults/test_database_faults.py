"""A database file that is not one any more: set aside at start, recording goes on."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from recorder.config import Config
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, Frame
from tests.conftest import running


def corrupt_copies(db_path: Path) -> list[Path]:
    return sorted(p for p in db_path.parent.iterdir() if ".corrupt-" in p.name)


async def test_a_file_that_is_not_a_database_is_set_aside(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    garbage = bytes(range(256)) * 64
    db_path.write_bytes(garbage)
    async with running(make_config("ws://127.0.0.1:9")) as svc:
        assert svc.writer.committed == 0
    (moved,) = corrupt_copies(db_path)
    assert moved.read_bytes() == garbage  # kept, untouched, for a postmortem
    with sqlite3.connect(db_path) as conn:
        tables = {name for (name,) in conn.execute("select name from sqlite_master")}
    assert {"frames", "sessions", "connections"} <= tables


async def test_after_an_unclean_stop_a_corrupt_table_is_found_and_set_aside(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    async def fill() -> None:
        writer = Writer(f"sqlite+aiosqlite:///{db_path}")
        await writer.start()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://x")
        for i in range(1, 20_001):
            data = json.dumps(
                {"type": "stream_chunk", "data": {"sessionId": "s", "chunk": "x" * 100, "i": i}}
            )
            await writer.put(Frame(cid, i, IN, i, i, True, data.encode()))
        writer.stop()
        await task
        await writer.close()

    await fill()
    # Garbage over pages in the middle of the frames table, as a failing disk leaves it.
    size = db_path.stat().st_size
    with db_path.open("r+b") as fh:
        for offset in range(size // 3, size // 3 + 16 * 4096, 4096):
            fh.seek(offset + 200)
            fh.write(b"\xde\xad\xbe\xef" * 64)
    # The lock file of a recorder that did not stop cleanly (SIGKILL, power loss).
    Path(f"{db_path}.lock").write_text('{"pid": 1, "host": "h", "since": "x"}')
    async with running(make_config("ws://127.0.0.1:9")) as svc:
        assert svc.unclean
    (moved,) = corrupt_copies(db_path)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("pragma quick_check").fetchone() == ("ok",)
        assert conn.execute("select count(*) from frames").fetchone() == (0,)
    assert moved.stat().st_size == size
