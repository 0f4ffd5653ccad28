"""Gaps in a replay are told, not waited out: one before the session's first frame or
after its last is marked and takes no time; one between frames is marked with its
real length and waited at most --max-idle, else 5 s."""

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
from recorder.db.recordings import Recordings
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN
from recorder.protocol.story import Gap
from recorder.replay import source
from recorder.replay.plan import Cue, ReplayFrame, timeline
from recorder.replay.text import show
from recorder.replay.timing import GAP_WAIT, Pace, paced
from tests.serve_client import serving, url

YEAR_US = 365 * 86_400 * 1_000_000


def frame(at_s: float, cid: int = 1) -> ReplayFrame:
    return ReplayFrame(1, cid, 1, IN, int(at_s * 1e6), int(at_s * 1e9), "x", True, b"{}")


def gap(start_s: float, end_s: float) -> Gap:
    return Gap(int(start_s * 1e6), int(end_s * 1e6))


def test_a_gap_before_the_first_frame_or_after_the_last_takes_no_time() -> None:
    year = YEAR_US / 1e6
    frames = [frame(year + 10.0), frame(year + 10.5)]
    gaps = [gap(0.0, year + 9.0), gap(year + 11.0, 3 * year)]
    cues = list(timeline(frames, gaps))
    assert [(c.t, c.edge, c.gap is not None) for c in cues] == [
        (0.0, "before", True),
        (0.0, "", False),
        (0.5, "", False),
        (0.5, "after", True),
    ]
    assert [pause for pause, _ in paced(cues, Pace())] == [0.0, 0.0, 0.5, 0.0]


def test_a_gap_between_frames_keeps_its_length_and_is_waited_at_most_5_s() -> None:
    frames = [frame(10.0), frame(3610.0, cid=2), frame(3611.0, cid=2)]
    cues = list(timeline(frames, [gap(11.0, 3609.0)]))
    # Recorded time keeps the hour (--from and --until count in it) ...
    assert [c.t for c in cues] == [0.0, 1.0, 3600.0, 3601.0]
    assert cues[1].gap is not None and not cues[1].edge
    # ... and a player waits at most 5 s of it, or --max-idle when given.
    assert [p for p, _ in paced(cues, Pace())] == [0.0, 1.0, GAP_WAIT, 1.0]
    assert [p for p, _ in paced(cues, Pace(max_idle=2))] == [0.0, 1.0, 2.0, 1.0]
    assert [p for p, _ in paced(cues, Pace(speed=2))] == [0.0, 0.5, GAP_WAIT / 2, 0.5]
    # Only the gap's silence is capped: a long pause with a recording up is not.
    quiet = list(timeline([frame(0.0), frame(60.0)], []))
    assert [p for p, _ in paced(quiet, Pace())] == [0.0, 60.0]


def test_a_gap_marker_says_how_long_it_really_was() -> None:
    year = gap(0.0, YEAR_US / 1e6)
    assert show(Cue(0.0, gap=year, edge="before")) is not None
    labels = [
        show(cue).label  # type: ignore[union-attr]
        for cue in (
            Cue(0.0, gap=year, edge="before"),
            Cue(1.0, gap=gap(1.0, 3.5)),
            Cue(2.0, gap=gap(2.0, 3722.0), edge="after"),
        )
    ]
    assert labels == [
        "31536000.0 s (365 d) with no recording connection, "
        "before the first frame played (not waited)",
        "2.5 s with no recording connection",
        "3720.0 s (1 h 2 min) with no recording connection, "
        "after the last frame played (not waited)",
    ]


SID = "session_1795692537464_yearlong"
T0_US = 1_795_692_537_000_000  # 2026-11-26T11:28:57Z
STEP_S = 0.3
CHUNKS = ["one\n", "two\n", "three\n", "four\n"]


def daemon_time(us: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(us / 1e6, UTC).isoformat().replace("+00:00", "Z")


def session_update(state: str, **times: int) -> dict[str, Any]:
    session: dict[str, Any] = {"id": SID, "status": state}
    session.update({name: daemon_time(us) for name, us in times.items()})
    return {"type": "session_status_update", "session": session}


@pytest.fixture(scope="module")
def year_long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session the daemon says started a year before the recorder first saw it (the
    recorder started after the daemon) and will end in 2126: its chunks, STEP_S
    apart from T0, on a link that opened a second before them and closed a second
    after."""
    path = tmp_path_factory.mktemp("gaps") / "recorder.db"
    script = [(0, session_update("running", startedAt=T0_US - YEAR_US))]
    script += [
        (i, {"type": "stream_chunk", "data": {"sessionId": SID, "chunk": c}})
        for i, c in enumerate(CHUNKS)
    ]
    script.append((len(CHUNKS) - 1, session_update("completed", endedAt=T0_US + 100 * YEAR_US)))

    async def fill() -> None:
        db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{path}")
        await db.connect()
        await db.run(upgrade_sync)
        store = Store(db.dialect)
        cid = await db.run(store.open_connection, "link", "ws://127.0.0.1:8787", T0_US - 1_000_000)
        step_us = int(STEP_S * 1e6)
        batch = [
            (
                cid,
                seq,
                IN,
                T0_US + at * step_us,
                at * step_us * 1000,
                True,
                json.dumps(obj).encode(),
            )
            for seq, (at, obj) in enumerate(script, 1)
        ]
        rows, index = Classifier().rows_and_index(batch)
        await db.run(store.write_batch, rows, index)
        close = partial(store.close_connection, code=1000, reason="", closed_by="local", error=None)
        await db.run(close, cid, T0_US + len(CHUNKS) * step_us + 1_000_000)
        await db.shutdown()

    asyncio.run(fill())
    return path


def test_a_year_long_leading_gap_is_not_waited(year_long: Path) -> None:
    """At --speed 1 the first chunk comes at once, and the replay takes the time of its
    frames, whatever the daemon says of when the session started and will end."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", "replay", "--database", str(year_long), SID],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[tuple[float, str]] = []
    try:
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    shown = [text for _, text in lines if not text.startswith("[gap] ")]
    assert shown == ["[status] running", "one", "two", "three", "four", "[status] completed"]
    first_chunk = next(at for at, text in lines if text == "one")
    last_chunk = next(at for at, text in lines if text == "four")
    # Within a second of starting the command (the interpreter's start included).
    assert first_chunk - started < 1.0
    # From the first chunk to the last: the recorded 0.9 s, not a year nor 5 s.
    frames_span = (len(CHUNKS) - 1) * STEP_S
    assert frames_span - 0.05 <= last_chunk - first_chunk <= frames_span + 0.4
    assert lines[-1][0] - started < 10


def test_an_export_of_it_keeps_the_frames_times(year_long: Path, tmp_path: Path) -> None:
    cast = tmp_path / "session.cast"
    result = CliRunner().invoke(
        cli, ["export", "--database", str(year_long), SID, "--output", str(cast)]
    )
    assert result.exit_code == 0, result.output
    _, *events = [json.loads(line) for line in cast.read_text().splitlines()]
    chunks = [e[0] for e in events if e[1] == "o" and e[2] in ("one\r\n", "four\r\n")]
    assert chunks == pytest.approx([0.0, STEP_S * (len(CHUNKS) - 1)], abs=1e-6)


async def test_a_served_replay_is_not_held_by_the_gap(year_long: Path) -> None:
    """A UI pointed at --serve gets the first chunk at once, not only the hello."""
    with Recordings.open(f"sqlite:///{year_long}") as reader:
        stream = source.Stream(reader, source.open_session(reader, SID))
        try:
            async with serving(stream, pace=Pace()) as server, connect(url(server)) as ws:
                started = time.monotonic()
                got = [json.loads(await ws.recv()) for _ in range(3)]  # hello, status, "one"
                assert got[2]["data"]["chunk"] == CHUNKS[0]
                assert time.monotonic() - started < 1.0
        finally:
            stream.close()
