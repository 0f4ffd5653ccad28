"""Queries at the edges: files that are no recording, a closed pipe or stdout, a full
disk, and `tail` printing what is committed after it started."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, Frame

TIMEOUT = 30


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_an_unrelated_or_empty_file_is_not_changed(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    result = invoke("sessions", "--database", str(empty))
    assert result.exit_code == 1 and result.stdout == ""
    assert (
        result.stderr.strip()
        == f"Error: database {empty} has no recorder tables; run `recorder db upgrade`"
    )
    assert empty.stat().st_size == 0 and sorted(tmp_path.iterdir()) == [empty]
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table t(x)")
    before = other.read_bytes()
    assert invoke("frames", "--database", str(other)).exit_code == 1
    assert other.read_bytes() == before


def test_errors_are_one_line_naming_the_path_as_written(tmp_path: Path) -> None:
    for target, expected in (
        (str(tmp_path), f"Error: {tmp_path} is a directory, not a database file"),
        (
            "missing.db",
            "Error: no database at missing.db (start `recorder run` or run `recorder db upgrade`)",
        ),
    ):
        result = invoke("sessions", "--database", target)
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.strip() == expected
        assert "sqlite+" not in result.stderr and "Background" not in result.stderr


def run_cli(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "recorder", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


@pytest.fixture
def many_frames(tmp_path: Path) -> Iterator[Path]:
    """A database with enough frames to fill a pipe many times over."""
    path = tmp_path / "many.db"

    async def fill() -> None:
        writer = Writer(f"sqlite+aiosqlite:///{path}")
        await writer.start()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://127.0.0.1:8787")
        for i in range(1, 5001):
            status = b'{"type":"session_status_update","session":{"id":"s%05d","status":"running"}}'
            await writer.put(Frame(cid, i, IN, 1_000_000 + i, i, True, status % i))
        writer.stop()
        await task
        await writer.close()

    asyncio.run(fill())
    yield path


@pytest.mark.parametrize("command", [["frames", "--limit", "0"], ["sessions", "--limit", "0"]])
def test_a_closed_pipe_ends_quietly(many_frames: Path, command: list[str]) -> None:
    proc = run_cli(*command, "--database", str(many_frames))
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    assert proc.wait(TIMEOUT) == 0
    assert proc.stderr.read() == b""


def test_tail_prints_frames_committed_after_it_started(tmp_path: Path) -> None:
    path = tmp_path / "tail.db"

    async def scenario() -> None:
        writer = Writer(f"sqlite+aiosqlite:///{path}")
        await writer.start()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://x")
        await writer.put(Frame(cid, 1, IN, 1, 1, True, b'{"type":"before"}'))
        await writer.flush()
        proc = run_cli("tail", "--database", str(path), "--format", "jsonl", "--last", "1")
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        try:
            first = json.loads(await loop.run_in_executor(None, proc.stdout.readline))
            assert first["type"] == "before"  # it has read where the database ends
            await writer.put(Frame(cid, 2, IN, 2, 2, True, b'{"type":"after"}'))
            await writer.flush()
            async with asyncio.timeout(TIMEOUT):
                second = json.loads(await loop.run_in_executor(None, proc.stdout.readline))
            assert second["type"] == "after" and second["seq"] == 2
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert await loop.run_in_executor(None, proc.wait, TIMEOUT) == 0
            assert proc.stderr is not None and proc.stderr.read() == b""
        writer.stop()
        await task
        await writer.close()

    asyncio.run(scenario())


def test_db_current_on_a_file_without_a_schema_says_none(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    result = invoke("db", "current", "--database", str(empty))
    assert result.exit_code == 0 and result.stdout.startswith("none (head: ")
    assert sorted(tmp_path.iterdir()) == [empty] and empty.stat().st_size == 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
@pytest.mark.parametrize(
    "command",
    [
        ["frames", "--limit", "0", "--format", "jsonl"],
        ["sessions", "--format", "jsonl"],
        ["--help"],
    ],
)
def test_a_full_disk_is_one_line(many_frames: Path, command: list[str]) -> None:
    if command[0] != "--help":
        command = [*command, "--database", str(many_frames)]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "recorder", *command],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT,
        )
    assert proc.returncode == 1
    assert proc.stderr == b"Error: cannot write output: No space left on device\n"


@pytest.mark.parametrize("command", [["frames", "--limit", "0"], ["sessions"], ["--version"]])
def test_a_closed_stdout_is_one_line_and_the_database_is_untouched(
    many_frames: Path, command: list[str]
) -> None:
    before = hashlib.sha256(many_frames.read_bytes()).hexdigest()
    if command[0] != "--version":
        command = [*command, "--database", str(many_frames)]
    argv = [sys.executable, "-m", "recorder", *command]
    proc = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 1
    assert proc.stderr == b"Error: cannot write output: stdout is closed\n"
    assert hashlib.sha256(many_frames.read_bytes()).hexdigest() == before
