"""`recorder replay --follow`: a replay that follows a session as it is recorded plays
only the conversation it chose, as a replay of the finished session does."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.migrations import upgrade_sync
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from recorder.times import now_us

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


# What a replay played: (connection, frame).
Played = tuple[int, dict[str, Any]]


def played_row(line: str | bytes) -> Played:
    row = json.loads(line)
    return row["connection_id"], json.loads(row["payload"])


class Follower:
    """`recorder replay ARGS` as a subprocess, reading the JSONL lines it prints."""

    def __init__(self, replay: asyncio.subprocess.Process) -> None:
        self.replay = replay

    @classmethod
    async def start(cls, args: list[str]) -> Follower:
        replay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", "replay", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert replay.stdout is not None and replay.stderr is not None
        return cls(replay)

    async def line(self) -> Played:
        """The next line it prints, as it prints it."""
        replay = self.replay
        line = await asyncio.wait_for(replay.stdout.readline(), 30)  # type: ignore[union-attr]
        assert line, await replay.stderr.read()  # type: ignore[union-attr]
        return played_row(line)

    async def rest(self) -> list[Played]:
        """Every line it prints until it ends, which it must, and well."""
        replay = self.replay
        async with asyncio.timeout(30):
            rest, errors = await replay.communicate()
        assert replay.returncode == 0, errors.decode()
        return [played_row(line) for line in rest.decode().splitlines()]


async def before_the_replay(rec: LiveRecording) -> tuple[int, int]:
    """The link, and the UI that spawns the session, up to its first chunk: their
    connections, (link, ui)."""
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
    return link, ui


async def while_it_follows(rec: LiveRecording, link: int, ui: int) -> int:
    """Another UI's task, the UI's next chunk, its reconnection and last chunk, then the
    session's end as only the link saw it: the reconnected UI's connection."""
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
    return again


@pytest.mark.parametrize("only_the_creator", [False, True])
async def test_follow_plays_only_what_the_replay_chooses(
    tmp_path: Path, only_the_creator: bool
) -> None:
    path = tmp_path / "recorder.db"
    rec = LiveRecording(path)
    await rec.start()
    try:
        link, ui = await before_the_replay(rec)
        args = ["--database", str(path), FOLLOWED, "--follow", "--instant", "--format", "jsonl"]
        if only_the_creator:
            args += ["--connection", str(ui)]
        replay = await Follower.start(args)
        # What was recorded before it started, then, while it follows:
        played = [await replay.line() for _ in range(3)]
        again = await while_it_follows(rec, link, ui)
        played += await replay.rest()
    finally:
        await rec.db.shutdown()

    # The UI's requests are played too (both directions), the other UI's not.
    spawn = (ui, {"type": "spawn_session", "payload": TASK})
    spawned = (ui, status("running", "session_spawned"))
    task = {"type": "execute_task", "payload": {"sessionId": FOLLOWED, "task": "T"}}
    expected = [spawn, (ui, status("running")), spawned, (ui, stream("one"))]
    expected += [(ui, task), (ui, stream("two"))]
    if not only_the_creator:
        expected += [(again, stream("three")), (again, task), (link, status("completed"))]
    assert played == expected
    # What a replay of the finished session plays, too.
    after = CliRunner().invoke(cli, ["replay", *(a for a in args if a != "--follow")])
    assert after.exit_code == 0, after.output
    rows = [json.loads(line) for line in after.stdout.splitlines()]
    assert [(r["connection_id"], json.loads(r["payload"])) for r in rows] == expected
