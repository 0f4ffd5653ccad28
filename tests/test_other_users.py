"""The commands as someone other than the recorder runs them.

"Another user" is a real process that owns none of the files: ``python -m recorder``
with every capability dropped (``setpriv``), its files given to nobody (65534). Not
uid 65534 itself: the interpreter may live where nobody cannot run it (here, /root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.pipeline.writer import Writer
from recorder.protocol.frames import Frame
from tests.test_cli import FRAMES, S1, T0
from tests.test_service import Recorder

SETPRIV = shutil.which("setpriv")
NOBODY = 65534

another_user = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="acting as another user needs root and setpriv"
)

READS = [
    ["status"],
    ["sessions"],
    ["frames"],
    ["show", S1],
    ["tasks"],
    ["connections"],
    ["stats"],
    ["replay", S1, "--instant"],
    ["export", S1],
    ["tail"],
    ["cleanup", "history"],
    ["cleanup", "run", "--dry-run"],
    ["db", "current"],
]
WRITES = [
    ["cleanup", "run"],
    ["pin", S1],
    ["unpin", S1],
    ["db", "upgrade"],
    ["db", "vacuum"],
    ["replay", S1, "--to", "ws://127.0.0.1:9"],
]


def as_another_user(config: Path, *commands: list[str]) -> list[tuple[int, str]]:
    """Each command as another user, all at once: (exit code, stdout and stderr)."""
    # Without a capability, uid 0 is bound by file modes like any other user.
    drop = [SETPRIV or "setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    procs = [
        subprocess.Popen(
            [*drop, sys.executable, "-m", "recorder", *command, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in commands
    ]
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    return [(proc.returncode, out) for proc, out in zip(procs, outputs, strict=True)]


def one_line_each(results: list[tuple[int, str]], commands: list[list[str]]) -> list[str]:
    """The one error line of each command, asserting that there was exactly that."""
    lines = []
    for (code, out), command in zip(results, commands, strict=True):
        assert code == 1 and out.startswith("Error: ") and out.count("\n") == 1, (command, out)
        lines.append(out.strip())
    return lines


def give_to_nobody(state: Path, *, directory: int, files: int, lock: int = 0o600) -> None:
    """The recorder's files as its own user would have them, modes chosen by the test."""
    for path in (state, *state.iterdir()):
        os.chown(path, NOBODY, NOBODY)
        mode = directory if path == state else lock if path.name.endswith(".lock") else files
        path.chmod(mode)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A recorder's state directory holding a recording: S1 running, S2 failed."""
    state = tmp_path / "state"
    state.mkdir()
    db = state / "recorder.db"

    async def fill() -> None:
        writer = Writer(f"sqlite+aiosqlite:///{db}")
        await writer.start()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://127.0.0.1:8787")
        for i, (direction, data, is_text) in enumerate(FRAMES, 1):
            await writer.put(Frame(cid, i, direction, T0 + i * 60_000_000, i, is_text, data))
        writer.stop()
        await task
        await writer.close()

    asyncio.run(fill())
    return state


@pytest.fixture
def config(tmp_path: Path, state: Path) -> Path:
    """A dead daemon, the recording above, and a policy that purges every failed session."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[daemon]\nurl = "ws://127.0.0.1:9"\nopen_timeout = 2.0\n'
        f"[reconnect]\nbase = 0.05\ncap = 0.2\n"
        f'[storage]\nurl = "sqlite:///{state / "recorder.db"}"\ncommit_interval = 0.05\n'
        f'[proxy]\nlisten = "127.0.0.1:0"\n[log]\nformat = "json"\n'
        f'[[cleanup.policies]]\nname = "purge-failed"\nschedule = "every 1h"\n'
        f'action = "purge"\nwhen = {{ status = ["failed"] }}\n'
    )
    return path


@pytest.fixture
def recorder(tmp_path: Path, config: Path) -> Iterator[Recorder]:
    """`recorder run` on the recording, ready (as root: the recorder's own user here)."""
    rec = Recorder(tmp_path, config)
    try:
        rec.ready()
        yield rec
    finally:
        if rec.proc.poll() is None:
            rec.proc.kill()
        rec.proc.wait()


def rows(state: Path, sql: str) -> list[tuple[object, ...]]:
    """Read as root, read-only: what the test's commands left in the database."""
    uri = f"file:{state / 'recorder.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        return list(conn.execute(sql))


@another_user
def test_status_tells_a_running_recorder_from_one_that_is_not(
    state: Path, config: Path, recorder: Recorder
) -> None:
    give_to_nobody(state, directory=0o755, files=0o644)
    ((code, out), (_, text)) = as_another_user(config, ["status", "--json"], ["status"])
    assert code == 0, out
    info = json.loads(out)
    lock = state / "recorder.db.lock"
    assert info["running"] is True and info["recorder"]["pid"] == recorder.proc.pid
    assert info["lock_error"] == f"cannot read its lock {lock} (permission denied)"
    assert text.startswith(f"recorder    running: PID {recorder.proc.pid} on ")
    heartbeat = f"; cannot read its lock {lock} (permission denied), so this is from its heartbeat"
    assert text.splitlines()[0].endswith(heartbeat)
    assert recorder.stop() == 0
    # A minute later: its heartbeat is old, so it is not running (and status says how
    # it knows).
    with sqlite3.connect(state / "recorder.db") as conn:
        conn.execute("UPDATE instances SET heartbeat_us = heartbeat_us - 60000000")
    ((code, out), (_, text)) = as_another_user(config, ["status", "--json"], ["status"])
    info = json.loads(out)
    assert info["running"] is False and info["lock_error"].startswith("cannot read its lock")
    assert text.startswith("recorder    not running (last heard from ")
    assert "so this is from its heartbeat" in text.splitlines()[0]
