"""The commands as someone other than the recorder runs them: another user gets one
line, never a traceback, and no command writes beside a running recorder, nor where it
cannot tell whether one runs.

"Another user" is a real process that owns none of the files: ``python -m recorder``
with every capability dropped (``setpriv``), its files given to nobody (65534). Not
uid 65534 itself: the interpreter may live where nobody cannot run it (here, /root).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from tests.conversations import S1, S2, fill
from tests.service_process import Recorder

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
    ["replay", S1, "--against", "ws://127.0.0.1:9"],
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
    fill(state / "recorder.db")
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
@pytest.mark.parametrize("layout", ["private directory", "private WAL"])
def test_every_command_tells_another_user_in_one_line_that_it_cannot_read(
    state: Path, config: Path, layout: str
) -> None:
    live = None
    if layout == "private directory":
        # As systemd's StateDirectory= makes it: nobody else may even look inside.
        give_to_nobody(state, directory=0o700, files=0o600)
    else:
        # The file opened to a group of readers, but a live recorder's WAL, holding its
        # latest commits, is not: the file alone would be an older database.
        live = sqlite3.connect(state / "recorder.db")
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("PRAGMA wal_autocheckpoint=0")
        live.execute("UPDATE connections SET id = id")
        live.commit()
        give_to_nobody(state, directory=0o755, files=0o600)
        (state / "recorder.db").chmod(0o644)
    try:
        commands = READS + WRITES
        lines = one_line_each(as_another_user(config, *commands), commands)
    finally:
        if live is not None:
            live.close()
    db = state / "recorder.db"
    cannot_read = f"Error: cannot read {db}{'' if live is None else '-wal'} (permission denied)"
    for line, command in zip(lines, commands, strict=True):
        if command[0] in ("pin", "unpin") or command not in WRITES:
            assert line == cannot_read, command
        elif live is None:
            # It cannot see whether a recorder runs: it says so rather than guess.
            assert line.startswith(f"Error: cannot tell whether a recorder is running on {db}")
        elif command[0] == "cleanup" and command[1] == "run":
            # No recorder has run here: it takes the lock to write alone, and may not.
            assert line == f"Error: cannot write database {db} (permission denied)", line
        elif command[0] == "db" and command[1] == "upgrade":
            # No recorder has run here (no lock): it tried to write, and could not.
            assert line.startswith(f"Error: cannot write database {db}: "), line
        else:
            assert line == cannot_read, command


@another_user
def test_commands_that_write_tell_a_reader_in_one_line_that_they_cannot_write(
    state: Path, config: Path
) -> None:
    give_to_nobody(state, directory=0o755, files=0o644)
    # Reading works...
    ((code, out),) = as_another_user(config, ["sessions", "--json"])
    assert code == 0 and S2 in out
    # ...writing does not, and says so in a line. (No recorder has run: no lock.)
    commands = [c for c in WRITES if c[0] != "replay"]
    for line in one_line_each(as_another_user(config, *commands), commands):
        assert line.startswith(f"Error: cannot write database {state / 'recorder.db'}")
    assert rows(state, f"SELECT id FROM sessions WHERE id = '{S2}'") == [(S2,)]


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


@another_user
def test_nothing_is_written_beside_a_recorder_whose_lock_another_user_cannot_read(
    state: Path, config: Path, recorder: Recorder
) -> None:
    # Everything writable by anyone, but the lock: as the attacker found it.
    give_to_nobody(state, directory=0o777, files=0o666)
    for line in one_line_each(as_another_user(config, *WRITES), WRITES):
        assert line == (
            f"Error: cannot tell whether a recorder is running on {state / 'recorder.db'}: "
            f"cannot read its lock {state / 'recorder.db.lock'} (permission denied); "
            "changed nothing (run this as the user the recorder runs as)"
        )
    assert recorder.stop() == 0
    # The failed session is still there, whole; nothing was pinned, run or replayed.
    assert rows(state, f"SELECT frame_count FROM sessions WHERE id = '{S2}'") == [(1,)]
    assert rows(state, "SELECT count(*) FROM pins") == [(0,)]
    assert rows(state, "SELECT count(*) FROM cleanup_runs") == [(0,)]
    assert rows(state, "SELECT count(*) FROM connections WHERE role = 'replay'") == [(0,)]
    assert sorted(p.name for p in state.iterdir() if "corrupt" in p.name) == []


def test_its_own_user_migrates_and_replays_only_with_the_recorder_stopped(
    state: Path, config: Path, recorder: Recorder
) -> None:
    """Not another user, but the same rule: a migration or a live replay's writer does
    not run beside the recorder; a pin, a row the recorder reads, still goes in."""

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, [*args, "--config", str(config)])
        return result.exit_code, result.output

    running = f"Error: a recorder is running on {state / 'recorder.db'} (PID {recorder.proc.pid} "
    code, out = invoke("db", "upgrade")
    assert code == 1 and out.startswith(running) and out.count("\n") == 1
    assert "stop it first to migrate" in out
    code, out = invoke("replay", S1, "--against", "ws://127.0.0.1:9")
    assert code == 1 and out.startswith(running) and "--database COPY" in out
    assert invoke("pin", S1) == (0, f"{S1} pinned\n")
    assert recorder.stop() == 0
    assert invoke("db", "upgrade")[0] == 0
    assert rows(state, "SELECT count(*) FROM connections WHERE role = 'replay'") == [(0,)]
