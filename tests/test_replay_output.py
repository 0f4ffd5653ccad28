"""Replay to the terminal, as JSONL, served, and exported as asciicast v2: the recorded
pauses, windows, markers, and bad input in one line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect

from recorder.cli import cli
from recorder.db.migrations import upgrade_sync
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN
from recorder.replay.plan import Cue, ReplayFrame

SID = "session_1795692537464_pauses"
T0_US = 1_795_692_537_000_000
T0_NS = 5_000_000_000
# (seconds after the start, frame): three chunks half a second apart, then the end.
SCRIPT: list[tuple[float, dict[str, object]]] = [
    (0.0, {"type": "session_status_update", "session": {"id": SID, "status": "running"}}),
    (0.0, {"type": "stream_chunk", "data": {"sessionId": SID, "chunk": "one\n"}}),
    (
        0.5,
        {
            "type": "tool_call_start",
            "data": {"sessionId": SID, "toolName": "read_file", "toolInput": {"path": "a"}},
        },
    ),
    (0.5, {"type": "stream_chunk", "data": {"sessionId": SID, "chunk": "two\n"}}),
    (1.0, {"type": "stream_chunk", "data": {"sessionId": SID, "chunk": "three\n"}}),
    (1.0, {"type": "session_status_update", "session": {"id": SID, "status": "completed"}}),
]


@pytest.fixture(scope="module")
def paused(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session whose frames were received at known moments (0, 0.5, 1.0 s), written
    by the database process's own code, on a link connection open throughout."""
    path = tmp_path_factory.mktemp("replay") / "recorder.db"

    async def fill() -> None:
        db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{path}")
        await db.connect()
        await db.run(upgrade_sync)
        store = Store(db.dialect)
        cid = await db.run(store.open_connection, "link", "ws://127.0.0.1:8787", T0_US - 1_000_000)
        batch = [
            (
                cid,
                seq,
                IN,
                T0_US + int(at * 1e6),
                T0_NS + int(at * 1e9),
                True,
                json.dumps(obj).encode(),
            )
            for seq, (at, obj) in enumerate(SCRIPT, 1)
        ]
        rows, index = Classifier().rows_and_index(batch)
        await db.run(store.write_batch, rows, index)
        close = partial(store.close_connection, code=1000, reason="", closed_by="local", error=None)
        await db.run(close, cid, T0_US + 2_000_000)
        await db.shutdown()

    asyncio.run(fill())
    return path


def timed_lines(*args: str) -> list[tuple[float, str]]:
    """Run `recorder replay` and note when each line of its output arrived."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", "replay", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append((time.monotonic(), line.rstrip("\n")))
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    return lines


@pytest.mark.parametrize(
    ("options", "expected"),
    [([], 1.0), (["--speed", "4"], 0.25), (["--max-idle", "0.1"], 0.2)],
)
def test_replay_keeps_the_recorded_pauses(
    paused: Path, options: list[str], expected: float
) -> None:
    lines = timed_lines("--database", str(paused), SID, *options)
    texts = [text for _, text in lines]
    assert texts == [
        "[status] running",
        "one",
        '[tool] read_file {"path": "a"}',
        "two",
        "three",
        "[status] completed",
    ]
    first, last = lines[1][0], lines[4][0]  # "one" to "three"
    # A loaded 2-core machine delays a line now and then; never by this much.
    assert expected - 0.05 <= last - first <= expected + 0.4


def test_instant_and_a_window(paused: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["replay", "--database", str(paused), SID, "--instant", "--from", "0.4", "--until", "0.9"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ['[tool] read_file {"path": "a"}', "two"]


def test_jsonl_replay_is_the_frames_contract(paused: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    result = CliRunner().invoke(
        cli, ["replay", "--database", str(paused), SID[:20], "--instant", "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    # --instant never sleeps, not even sleep(0): on Linux that waits out the timer
    # slack, and made a 20 000-frame replay take 1.8 s instead of 0.5.
    assert slept == []
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert [json.loads(f["payload"]) for f in frames] == [obj for _, obj in SCRIPT]
    assert {f["session_id"] for f in frames} == {SID}


def test_asciicast_export_parses_as_v2(paused: Path, tmp_path: Path) -> None:
    cast = tmp_path / "session.cast"
    result = CliRunner().invoke(
        cli, ["export", "--database", str(paused), SID, "--output", str(cast), "--max-idle", "2"]
    )
    assert result.exit_code == 0, result.output
    header, *events = [json.loads(line) for line in cast.read_text().splitlines()]
    assert header["version"] == 2 and header["width"] > 0 and header["height"] > 0
    assert header["idle_time_limit"] == 2
    times = [e[0] for e in events]
    assert times == sorted(times) and all(isinstance(e[2], str) for e in events)
    assert {e[1] for e in events} == {"o", "m"}
    output = "".join(e[2] for e in events if e[1] == "o")
    assert output == (
        "\x1b[2m[status] running\x1b[0m\r\none\r\n"
        '\x1b[2m[tool] read_file {"path": "a"}\x1b[0m\r\ntwo\r\nthree\r\n'
        "\x1b[2m[status] completed\x1b[0m\r\n"
    )
    markers = [e[2] for e in events if e[1] == "m"]
    assert markers == [
        "status: running",
        'tool: read_file {"path": "a"}',
        "status: completed",
    ]
    chunk_times = [
        e[0] for e in events if e[1] == "o" and e[2] in ("one\r\n", "two\r\n", "three\r\n")
    ]
    assert chunk_times == pytest.approx([0.0, 0.5, 1.0], abs=1e-6)


def test_an_unknown_session_is_one_line(paused: Path) -> None:
    result = CliRunner().invoke(cli, ["replay", "--database", str(paused), "nope", "--instant"])
    assert result.exit_code == 1 and "no recorded session matches 'nope'" in result.output


# --- bad input: one line, before anything is read ------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--until", "http://x"], "Invalid value for '--until': 'http://x' is neither an offset "
         "(90, 1m30s) nor a time (2026-11-26T10:00:00Z)"),
        (["--against", "http://x"], "--against: expected a ws:// or wss:// URL, got 'http://x'"),
        (["--against", "ws://127.0.0.1:99999"], "Invalid value for '--against': not a daemon URL "
         "(ws://HOST:PORT): Port out of range 0-65535"),
        (["--against", "wss://[::1"], "Invalid value for '--against': not a daemon URL "
         "(ws://HOST:PORT): Invalid IPv6 URL"),
        (["--against", "ws://u:secret@127.0.0.1:x"], "Port could not be cast"),
        # --to meant a stop time, or a daemon to replay against: refused, naming both.
        (["--to", "5"], "--to is gone: --until OFFSET|TIME says where the replay stops, "
         "--against ws://HOST:PORT replays the session against a live daemon"),
        (["--speed", "nan"], "Invalid value for '--speed': 'nan' is not a finite number."),
        (["--max-idle", "inf"], "Invalid value for '--max-idle': 'inf' is not a finite number."),
        (["--serve", "127.0.0.1"], "--serve: expected HOST:PORT, got '127.0.0.1'"),
        (["--serve", "127.0.0.1:0", "--against", "ws://127.0.0.1:1"], "--serve and --against"),
    ],
)  # fmt: skip
def test_bad_replay_options_are_one_line_before_the_database_is_read(
    tmp_path: Path, args: list[str], says: str
) -> None:
    # No such database: reading it (or starting a writer, which would create and
    # migrate it) would be a different error, or a new file.
    database = tmp_path / "none.db"
    result = CliRunner().invoke(cli, ["replay", "--database", str(database), "nope", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and says in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "secret" not in result.stderr
    assert not database.exists()


def test_export_bad_input_is_one_line(paused: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.cast"
    result = CliRunner().invoke(cli, ["export", "--database", str(paused), SID, "-o", str(missing)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot write {missing}: No such file or directory\n"
    for value in ("nan", "inf"):
        result = CliRunner().invoke(
            cli, ["export", "--database", str(paused), SID, "--max-idle", value]
        )
        assert result.exit_code == 2 and result.stdout == ""
        assert (
            result.stderr
            == f"Error: Invalid value for '--max-idle': {value!r} is not a finite number.\n"
        )


def test_export_never_writes_over_the_database_nor_leaves_half_a_file(
    paused: Path, tmp_path: Path
) -> None:
    """`-o` naming the database opened it for writing, which emptied it, before a
    frame was read (found probing bad input). A full disk left half a file and a
    traceback; now what was there stays, and one line says why."""
    import shutil

    db = tmp_path / "copy.db"
    shutil.copy(paused, db)
    size = db.stat().st_size
    for output in (db, Path(f"{db}-wal")):
        result = CliRunner().invoke(cli, ["export", "--database", str(db), SID, "-o", str(output)])
        assert result.exit_code == 2, result.output
        assert result.stderr == f"Error: --output: {output} is the database being read\n"
    assert db.stat().st_size == size
    assert CliRunner().invoke(cli, ["export", "--database", str(db), SID]).exit_code == 0

    result = CliRunner().invoke(cli, ["export", "--database", str(db), SID, "-o", "/dev/full"])
    assert result.exit_code == 1
    assert result.stderr == "Error: cannot write /dev/full: No space left on device\n"

    kept = tmp_path / "kept.cast"
    kept.write_text("an earlier export\n")
    result = CliRunner().invoke(cli, ["export", "--database", str(db), SID, "-o", str(kept)])
    assert result.exit_code == 0 and kept.read_text().startswith('{"version": 2')
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # renamed


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--instant", "--connection", "999999"],
        ["replay", "--instant", "--from", "10", "--until", "5"],
        ["export", "--connection", "999999"],
        ["export", "--connection", "999999", "--format", "jsonl"],
    ],
)
def test_a_replay_that_matches_nothing_says_so(paused: Path, args: list[str]) -> None:
    """A filter that leaves no frame printed nothing at all (found probing bad input)."""
    result = CliRunner().invoke(cli, [*args, "--database", str(paused), SID])
    assert result.exit_code == 0
    assert result.stderr == "nothing to play: no frame of the session matches\n"


async def test_a_served_replay_stops_at_until(paused: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder", "replay", "--database", str(paused), SID,
        "--serve", "127.0.0.1:0", "--instant", "--until", "0.7",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stderr.readline()).decode()
            assert "as a daemon on ws://127.0.0.1:" in line, (
                line + (await proc.stderr.read()).decode()
            )
            async with connect(line.split()[-1]) as ws:
                await ws.recv()  # the hello
                got = [json.loads(await ws.recv()) for _ in range(4)]
                assert got == [obj for at, obj in SCRIPT if at <= 0.7]
                # Instant: the frames after 0.7 s would have come at once.
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await ws.recv()
    finally:
        proc.terminate()
        await proc.wait()


def test_markers_stay_short_whatever_a_daemon_names() -> None:
    """A tool name or a status of 10 MB was a 10 MB marker line (today's main)."""
    from recorder.replay.text import show

    huge = "n" * 10_000_000
    frames: list[dict[str, Any]] = [
        {"type": "tool_call_start", "data": {"toolName": huge, "toolInput": {"x": huge}}},
        {"type": "tool_call_result", "data": {"toolName": huge, "status": huge}},
        {"type": "session_status_update", "session": {"status": huge}},
    ]
    for i, obj in enumerate(frames):
        frame = ReplayFrame(i, 1, i, IN, i, i, obj["type"], True, json.dumps(obj).encode())
        shown = show(Cue(0.0, frame=frame))
        assert shown is not None and shown.is_marker and len(shown.label) < 300, i
