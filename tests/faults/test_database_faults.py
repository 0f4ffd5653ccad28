"""A database file that is not one any more: set aside at start, recording goes on."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recorder.config import Config
from recorder.db.integrity import HEADER
from recorder.db.migrations import head_revision
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, Frame
from recorder.service.lifecycle import Service
from tests.conftest import running


def corrupt_copies(db_path: Path) -> list[Path]:
    return sorted(p for p in db_path.parent.iterdir() if ".corrupt-" in p.name)


async def run_once(config: Config) -> int:
    """The service from start to stop; its exit code (it may end before starting)."""
    service = Service(config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    started = asyncio.create_task(service.started.wait())
    async with asyncio.timeout(30):
        await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        code = await task
    started.cancel()
    return code


async def test_a_sqlite_file_that_cannot_be_opened_is_set_aside(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    # SQLite's header, then garbage: a database whose first pages a disk destroyed.
    garbage = HEADER + bytes(range(256)) * 64
    db_path.write_bytes(garbage)
    async with running(make_config("ws://127.0.0.1:9")) as svc:
        assert svc.writer.committed == 0
    (moved,) = corrupt_copies(db_path)
    assert moved.read_bytes() == garbage  # kept, untouched, for a postmortem
    with sqlite3.connect(db_path) as conn:
        tables = {name for (name,) in conn.execute("select name from sqlite_master")}
    assert {"frames", "sessions", "connections"} <= tables


async def test_a_file_a_recorder_used_is_set_aside_even_without_a_header(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    garbage = bytes(range(256)) * 64
    db_path.write_bytes(garbage)
    # A recorder stopped cleanly on it before: it was ours, whatever became of it.
    Path(f"{db_path}.lock").write_text('{"pid": 1, "stopped": true, "at": "x"}')
    assert await run_once(make_config("ws://127.0.0.1:9")) == 0
    (moved,) = corrupt_copies(db_path)
    assert moved.read_bytes() == garbage


async def test_a_file_that_never_was_a_database_is_refused_untouched(
    make_config: Callable[..., Config], db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # storage.url pointing at the wrong file (a config, a log): never renamed.
    text = b"[daemon]\nurl = 'ws://localhost:8787'\n" * 100
    db_path.write_bytes(text)
    for _ in range(2):  # the refusal leaves no lock file that a second start would trust
        assert await run_once(make_config("ws://127.0.0.1:9")) == 2  # a config error
    assert not Path(f"{db_path}.lock").exists()
    assert db_path.read_bytes() == text
    assert corrupt_copies(db_path) == []
    assert not Path(f"{db_path}-wal").exists()
    out = capsys.readouterr()
    assert "is not a SQLite database and no recorder has used it" in out.out + out.err
    assert "Traceback" not in out.out + out.err


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


async def test_a_database_a_newer_recorder_migrated_is_refused_in_one_line(
    make_config: Callable[..., Config], db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A schema revision this recorder does not know: alembic's "Can't locate
    revision" traceback from `db upgrade` before (found probing bad input), and
    `db current` advised that very upgrade. Starting again cannot help: exit 2."""
    from click.testing import CliRunner

    from recorder.cli import cli

    def invoke(*args: str) -> Any:  # the CLI runs its own event loop: off this one
        return asyncio.to_thread(CliRunner().invoke, cli, [*args, "--database", str(db_path)])

    assert (await invoke("db", "upgrade")).exit_code == 0
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    upgrade = await invoke("db", "upgrade")
    assert upgrade.exit_code == 1
    assert upgrade.stderr == (
        "Error: the database's schema is revision '9999', which this recorder does not"
        f" know (its newest is {head_revision()}): a newer recorder wrote it\n"
    )
    current = await invoke("db", "current")
    assert current.stdout == (
        f"9999 (head: {head_revision()}; unknown to this recorder: a newer one wrote it)\n"
    )
    assert await run_once(make_config("ws://127.0.0.1:9")) == 2
    out = capsys.readouterr()
    assert "a newer recorder wrote it" in out.out + out.err and "Traceback" not in out.out + out.err
