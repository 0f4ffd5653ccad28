"""Shared test helpers: waiting on the database without sleeping, reading frames back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner
from sqlalchemy import text

from recorder.cli import cli
from recorder.db.engine import create_engine
from recorder.protocol.frames import IN, Frame, FrameTuple
from recorder.service.lifecycle import Service
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store


async def query(service: Service, sql: str, **params: Any) -> list[Any]:
    """Read the service's database the way the CLI does: another connection."""
    engine = create_engine(service.config.storage.url)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(text(sql), params))
    finally:
        await engine.dispose()


async def wait_until(
    service: Service, check: Callable[[], Awaitable[bool]], timeout: float = 10.0
) -> None:
    """Re-check after every commit of the writer until ``check()`` holds."""
    async with asyncio.timeout(timeout):
        while True:
            commit = asyncio.create_task(service.writer.wait_commit())
            await asyncio.sleep(0)
            if await check():
                commit.cancel()
                return
            await commit


async def wait_for_frame(service: Service, where: str, timeout: float = 10.0, **params: Any) -> Any:
    """Wait until a frame matching the SQL condition is committed; return the first."""
    found: list[Any] = []

    async def check() -> bool:
        found[:] = await query(
            service, f"select * from frames where {where} order by id limit 1", **params
        )
        return bool(found)

    await wait_until(service, check, timeout)
    return found[0]


def frame(text: str | bytes, direction: str = IN, at: int = 1_000, is_text: bool = True) -> Frame:
    """One frame on connection 1, as the link hands it over: ``text`` as its bytes."""
    data = text.encode() if isinstance(text, str) else text
    return Frame(1, 1, direction, at, 0, is_text, data)


def invoke(*args: str) -> tuple[int, str]:
    """A CLI command run in this process: its exit code and its output (both streams)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def cli_json_lines(args: list[str]) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line]


def frame_bytes(record: dict[str, Any]) -> bytes:
    import base64

    if "payload" in record:
        return str(record["payload"]).encode()
    return base64.b64decode(record["payload_b64"])


async def recorder_process(
    *args: str, env: Mapping[str, str] | None = None, merge_stderr: bool = False
) -> asyncio.subprocess.Process:
    """``python -m recorder ARGS`` as a real subprocess, its stdout (and stderr) piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recorder",
        *args,
        env=None if env is None else {**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
    )


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of every thread of it)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def grandchildren(pid: int) -> list[int]:
    """The writer's database process (and any other grandchild) of ``pid``."""
    return [g for c in children(pid) for g in children(c)]


@contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) for the block, and let go after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


async def writer_database(url: str) -> tuple[WriterDatabase, Store, int]:
    """A migrated database opened by the writer's own code, its Store, and the id of
    one link connection to record on. The caller shuts the database down."""
    from recorder.db.connection import WriterDatabase
    from recorder.db.migrations import upgrade_sync
    from recorder.db.write import Store

    db = await WriterDatabase.open(url)
    await db.run(upgrade_sync)
    store = Store(db.dialect)
    return db, store, await db.run(store.open_connection, "link", "ws://daemon", 1)


async def selected(db: WriterDatabase, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql``, read on the writer's own connection."""

    def read(conn: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.execute(text(sql))]

    return await db.run(read)


def refuse_connections(db: Path, role: str) -> Callable[[], None]:
    """From now on the database refuses new connection rows of ``role`` (an insert
    that fails, as a full disk or a broken constraint would make it); the returned
    function lifts the refusal."""
    name = f"refuse_{role}_connections"
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON connections WHEN NEW.role = '{role}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        conn.commit()

    def lift() -> None:
        with closing(sqlite3.connect(db, timeout=30)) as conn:
            conn.execute(f"DROP TRIGGER {name}")
            conn.commit()

    return lift


def free_port() -> int:
    """A loopback port nothing listens on now, for a process to be told to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def frames_for(cid: int, n: int) -> list[FrameTuple]:
    """``n`` small text frames received now on connection ``cid``, seq 1 to ``n``."""
    return [
        (cid, seq, IN, now_us(), time.monotonic_ns(), True, b'{"type":"x"}')
        for seq in range(1, n + 1)
    ]
