"""Replay to the terminal and export: timing, order, markers, asciicast v2."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
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
from recorder.protocol.frames import IN, OUT
from recorder.protocol.story import Gap
from recorder.replay.plan import Cue, ReplayFrame, timeline
from recorder.replay.terminal import Player
from recorder.replay.timing import Pace, on_time, paced
from recorder.times import now_us

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


def test_a_frame_received_earlier_on_another_connection_is_no_step_back() -> None:
    # 100 s (connection 1), 99 s (2), 101 s (3): the second plays at once, and the
    # third one second after the first, not two (the step back counted again).
    frames = [frame(1, 100.0, 1.0), frame(2, 99.0, 50.0), frame(3, 101.0, 9.0)]
    assert [c.t for c in timeline(frames, [])] == pytest.approx([0.0, 0.0, 1.0])


class FakeClock:
    """A clock that only moves when told: by a wait, or by the time writing takes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.held: dict[int, float] = {}  # wait number -> seconds a pause key held it

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        held = self.held.get(len(self.waits), 0.0)
        self.waits.append(seconds)
        self.now += seconds + held
        return held > 0


def test_each_cue_is_due_a_pause_after_the_one_before_was_due() -> None:
    clock = FakeClock()
    timed = [(0.0, Cue(0.0)), (1.0, Cue(1.0)), (1.0, Cue(2.0)), (0.5, Cue(2.5))]
    played = []
    for _ in on_time(timed, clock, clock.wait):
        played.append(clock.now)
        clock.now += 0.25  # writing the cue (and, following, polling for the next)
    # Not 0, 1.25, 2.5, 3.25: the time spent writing is not added to every pause.
    assert played == [0.0, 1.0, 2.0, 2.5]
    assert clock.waits == [0.0, 0.75, 0.75, 0.25]

    # Late (a slow poll): the next cue plays at once, and the ones after it are
    # back on the recording's schedule.
    clock = FakeClock()
    played = []
    for cue in on_time(timed, clock, clock.wait):
        played.append(clock.now)
        clock.now += 1.6 if cue.t == 0.0 else 0.0
    assert played == [0.0, 1.6, 2.0, 2.5]

    # Held by the pause key for 10 s: the cues after it keep their pauses from then.
    clock = FakeClock()
    clock.held = {1: 10.0}
    played = []
    for _ in on_time(timed, clock, clock.wait):
        played.append(clock.now)
    assert played == [0.0, 11.0, 12.0, 12.5]


class SlowOutput(io.StringIO):
    """A terminal that takes a tenth of a second per write."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def write(self, text: str) -> int:
        self.clock.now += 0.1
        return super().write(text)


def chunk(t: float, text: str) -> Cue:
    obj = {"type": "stream_chunk", "data": {"chunk": text}}
    data = json.dumps(obj).encode()
    return Cue(t, ReplayFrame(1, 1, 1, IN, 0, 0, "stream_chunk", True, data))


def test_the_terminal_player_keeps_to_the_recorded_schedule() -> None:
    clock = FakeClock()
    out = SlowOutput(clock)
    keys = clock  # Keys' part: wait(seconds) -> held or let go early
    timed = [(0.0, chunk(0.0, "a")), (1.0, chunk(1.0, "b")), (1.0, chunk(2.0, "c"))]
    Player(out, colour=False, clock=clock).play(timed, keys)  # type: ignore[arg-type]
    assert out.getvalue() == "abc\n"
    assert clock.waits == pytest.approx([0.0, 0.9, 0.9])


def test_an_interrupted_replay_still_ends_its_line() -> None:
    def stopped() -> Iterator[tuple[float, Cue]]:
        yield 0.0, chunk(0.0, "half a line")
        raise KeyboardInterrupt

    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        Player(out, colour=False, clock=FakeClock()).play(stopped(), FakeClock())  # type: ignore[arg-type]
    assert out.getvalue() == "half a line\n"


# --- --follow --------------------------------------------------------------------

FOLLOWED = "session_1795692537464_follow"
TASK = {"orchestratorId": "vp_1", "task": {"description": "D"}}


def status(state: str, kind: str = "session_status_update") -> dict[str, Any]:
    return {"type": kind, "session": {"id": FOLLOWED, "status": state, **TASK}}


def stream(text: str) -> dict[str, Any]:
    return {"type": "stream_chunk", "data": {"sessionId": FOLLOWED, "chunk": text}}


class LiveRecording:
    """Frames written as the database process writes them (classified, spawn requests
    attributed), batch by batch, while a replay reads the database."""

    def __init__(self, path: Path) -> None:
        self.db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{path}")
        self.store = Store(self.db.dialect)
        self.classifier = Classifier()
        self.seqs: dict[int, Iterator[int]] = defaultdict(lambda: itertools.count(1))
        # Ten minutes ago: every time below is in the past, as a recording's are.
        self.base = now_us() - 600_000_000

    def us(self, at: float) -> int:
        return self.base + int(at * 1e6)

    async def start(self) -> None:
        await self.db.connect()
        await self.db.run(upgrade_sync)

    async def open(self, role: str, at: float, client: str | None = None) -> int:
        url = "ws://127.0.0.1:8787"
        return int(await self.db.run(self.store.open_connection, role, url, self.us(at), client))

    async def write(self, *frames: tuple[int, str, float, dict[str, Any]]) -> None:
        batch = [
            (
                cid,
                next(self.seqs[cid]),
                way,
                self.us(at),
                int(at * 1e9),
                True,
                json.dumps(obj).encode(),
            )
            for cid, way, at, obj in frames
        ]
        rows, index = self.classifier.rows_and_index(batch)
        await self.db.run(self.store.write_batch, rows, index)

    async def close(self, cid: int, at: float) -> None:
        close = partial(
            self.store.close_connection, code=1000, reason="", closed_by="local", error=None
        )
        await self.db.run(close, cid, self.us(at))


@pytest.mark.parametrize("only_the_creator", [False, True])
async def test_follow_plays_only_what_the_replay_chooses(
    tmp_path: Path, only_the_creator: bool
) -> None:
    path = tmp_path / "recorder.db"
    rec = LiveRecording(path)
    await rec.start()
    try:
        link = await rec.open("link", 0)
        ui = await rec.open("proxy", 1, "10.0.0.1:1111")  # the UI that spawns the session
        spawn = {"type": "spawn_session", "payload": TASK}
        await rec.write(
            (ui, OUT, 2, spawn),
            (ui, IN, 3, status("running")),
            (link, IN, 3, status("running")),  # the broadcast: a duplicate
            (ui, IN, 3.5, status("running", "session_spawned")),  # the spawn's answer
            (ui, IN, 4, stream("one")),
        )
        args = ["--database", str(path), FOLLOWED, "--follow", "--instant", "--format", "jsonl"]
        if only_the_creator:
            args += ["--connection", str(ui)]
        replay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", "replay", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert replay.stdout is not None and replay.stderr is not None
        played: list[tuple[int, dict[str, Any]]] = []

        async def read_line() -> None:
            line = await asyncio.wait_for(replay.stdout.readline(), 30)  # type: ignore[union-attr]
            assert line, await replay.stderr.read()  # type: ignore[union-attr]
            row = json.loads(line)
            played.append((row["connection_id"], json.loads(row["payload"])))

        # What was recorded before it started, then, while it follows:
        for _ in range(3):
            await read_line()
        other = await rec.open("proxy", 5, "10.0.0.2:2222")  # another UI, elsewhere
        task = {"type": "execute_task", "payload": {"sessionId": FOLLOWED, "task": "T"}}
        await rec.write(
            (other, OUT, 6, task),
            (other, IN, 7, stream("to the other UI")),
            (ui, OUT, 8, task),
            (ui, IN, 9, stream("two")),
            (link, IN, 9.5, status("running")),  # the UI is still open: a duplicate
        )
        await rec.close(ui, 10)
        again = await rec.open("proxy", 11, "10.0.0.1:3333")  # the same UI, reconnected
        await rec.write((again, IN, 12, stream("three")), (again, OUT, 12.5, task))
        await rec.close(again, 13)
        # No UI open any more: the link's frames are the replay's.
        await rec.write((link, IN, 14, status("completed")))
        async with asyncio.timeout(30):
            rest, errors = await replay.communicate()
        assert replay.returncode == 0, errors.decode()
        for line in rest.decode().splitlines():
            row = json.loads(line)
            played.append((row["connection_id"], json.loads(row["payload"])))
    finally:
        await rec.db.shutdown()

    spawned = (ui, status("running", "session_spawned"))
    expected = [(ui, status("running")), spawned, (ui, stream("one")), (ui, stream("two"))]
    if not only_the_creator:
        expected += [(again, stream("three")), (link, status("completed"))]
    assert played == expected
    # What a replay of the finished session plays, too.
    after = CliRunner().invoke(cli, ["replay", *(a for a in args if a != "--follow")])
    assert after.exit_code == 0, after.output
    rows = [json.loads(line) for line in after.stdout.splitlines()]
    assert [(r["connection_id"], json.loads(r["payload"])) for r in rows] == expected


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


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (the side a person types into, the side the player reads)."""
    import os

    typed, read = os.openpty()
    try:
        yield typed, read
    finally:
        os.close(typed)
        os.close(read)


def test_space_pauses_and_dot_steps_on_a_real_terminal(terminal: tuple[int, int]) -> None:
    """The replay's keys, read from a pseudo-terminal in cbreak mode: space pauses
    (the wait holds however long it was), `.` lets one cue go while paused, space
    again resumes, and the terminal's mode is given back afterwards."""
    import os
    import termios

    from recorder.replay.terminal import keys_from

    typed, read = terminal
    before = termios.tcgetattr(read)
    with open(read, closefd=False) as stdin, keys_from(stdin, enabled=True) as keys:
        assert not termios.tcgetattr(read)[3] & termios.ICANON  # keys one by one
        started = time.monotonic()
        assert keys.wait(0.01) is False  # nothing typed: the wait passes as it is
        os.write(typed, b" .")  # pause, then step: a 60 s wait lets go at once
        assert keys.wait(60) is True and keys.paused
        os.write(typed, b" ")  # resume: the next wait runs, held by the pause
        assert keys.wait(0.01) is True and not keys.paused
        assert keys.wait(0.01) is False  # and the one after passes as it is
        assert time.monotonic() - started < 30
    assert termios.tcgetattr(read) == before


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
