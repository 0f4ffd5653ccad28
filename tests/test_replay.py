"""Replay to the terminal and export: timing, order, markers, asciicast v2."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.migrations import upgrade_sync
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN
from recorder.protocol.story import Gap
from recorder.replay.plan import Cue, ReplayFrame, timeline
from recorder.replay.timing import Pace, paced

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
        cli, ["replay", "--database", str(paused), SID, "--instant", "--from", "0.4", "--to", "0.9"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ['[tool] read_file {"path": "a"}', "two"]


def test_jsonl_replay_is_the_frames_contract(paused: Path) -> None:
    result = CliRunner().invoke(
        cli, ["replay", "--database", str(paused), SID[:20], "--instant", "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
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


def frame(cid: int, at_s: float, mono_s: float, kind: str = "stream_chunk") -> ReplayFrame:
    return ReplayFrame(1, cid, 1, IN, int(at_s * 1e6), int(mono_s * 1e9), kind, True, b"{}")


def test_timeline_uses_each_connections_clock_and_keeps_gaps() -> None:
    frames = [
        frame(1, 10.0, 100.0),
        # Same connection: the monotonic clock (0.25 s), not the receive times (0.3 s).
        frame(1, 10.3, 100.25),
        # Another connection, after a gap: receive times, the gap in between.
        frame(2, 12.0, 7.0),
    ]
    cues = list(timeline(frames, [Gap(int(11.0e6), int(11.5e6))]))
    assert [(round(c.t, 3), c.gap is not None) for c in cues] == [
        (0.0, False),
        (0.25, False),
        (0.95, True),
        (1.95, False),
    ]


def test_pace_speed_idle_cap_and_window() -> None:
    cues = [Cue(t) for t in (0.0, 1.0, 4.0, 4.5)]
    assert [p for p, _ in paced(cues, Pace(speed=2))] == [0.0, 0.5, 1.5, 0.25]
    assert [p for p, _ in paced(cues, Pace(max_idle=1))] == [0.0, 1.0, 1.0, 0.5]
    window = paced(cues, Pace(start=0.5, stop=4.2))
    assert [(p, c.t) for p, c in window] == [(0.0, 1.0), (3.0, 4.0)]
    assert all(p == 0 for p, _ in paced(cues, Pace(instant=True)))


def test_an_unknown_session_is_one_line(paused: Path) -> None:
    result = CliRunner().invoke(cli, ["replay", "--database", str(paused), "nope", "--instant"])
    assert result.exit_code == 1 and "no recorded session matches 'nope'" in result.output
