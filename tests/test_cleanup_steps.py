"""A cleanup run goes in steps (issue 17): a run killed part-way leaves a trace the
next run finishes from, a run whose every action failed says why, and a session too
large to compact at once is compacted in bounded steps."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner

from recorder.cleanup.actions import PURGE_CHUNK, Compact
from recorder.cleanup.actor import Run
from recorder.cleanup.jobs import Cleanup, Direct
from recorder.cli import cli
from recorder.config import Config, load_config
from recorder.pipeline.cleanup_ops import PurgeSome
from recorder.pipeline.ops import Operation
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.cleanup_scripts import DAY, chunk, cli_json, config_file, policy, record, rows, status
from tests.helpers import writer_database

T = TypeVar("T")


class Stalling(Direct):
    """Operations run directly; the chosen one stops for good after ``steps`` of it,
    as a run stops where a kill or a stop finds it (each step is its own transaction)."""

    def __init__(self, db: Any, store: Any, kind: type[Any], steps: int) -> None:
        super().__init__(db, store)
        self.kind, self.left = kind, steps
        self.stalled = asyncio.Event()

    async def perform(self, operation: Operation[T]) -> T:
        if isinstance(operation, self.kind):
            if self.left == 0:
                self.stalled.set()
                await asyncio.Event().wait()
            self.left -= 1
        return await super().perform(operation)


def purge_config(tmp_path: Path, db: Path) -> Config:
    return load_config(
        config_file(tmp_path, db, policy("bye", "purge", 'status = ["completed"]')), env={}
    )


async def test_a_purge_cut_short_leaves_a_trace_and_the_next_run_finishes_it(
    tmp_path: Path,
) -> None:
    """A purge killed part-way used to leave no audit row, and `show` called the half
    purged session complete. The row is written before it acts and counts each step's
    frames in that step's transaction; the session is marked; the next run says the
    cut-short run was interrupted and finishes the purge."""
    db = tmp_path / "recorder.db"
    url = f"sqlite:///{db}"
    base = now_us() - DAY
    total = 5 * PURGE_CHUNK
    script = [(base, IN, status("big", "running"))]
    script += [(base + i, IN, chunk("big", "x")) for i in range(1, total - 1)]
    script += [(base + total, IN, status("big", "completed"))]
    await record(url, script)
    config = purge_config(tmp_path, db)
    handle, store, _ = await writer_database(url)
    try:
        stalling = Stalling(handle, store, PurgeSome, steps=3)
        cleanup = Cleanup(config, stalling, None)
        task = asyncio.create_task(cleanup.run(config.cleanup.policies[0]))
        await asyncio.wait_for(stalling.stalled.wait(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await handle.shutdown()

    assert rows(db, "select state, frames, matched from cleanup_runs") == [
        ("running", 3 * PURGE_CHUNK, 1)
    ]
    assert rows(db, "select cleanup_state, frame_count from sessions") == [
        ("purging 1", total - 3 * PURGE_CHUNK)
    ]
    (seen,) = cli_json("cleanup", "history", "--database", str(db))
    assert (seen["state"], seen["frames"]) == ("interrupted", 3 * PURGE_CHUNK)
    # `show` says what is missing, in text and in JSON (it said "Gaps: none").
    text = CliRunner().invoke(cli, ["show", "--database", str(db), "big"]).stdout
    assert (
        f"partly purged: a cleanup run is part-way through it, or was cut short there ({total - 3 * PURGE_CHUNK:,} frames left)"
        in text
    )
    assert cli_json("show", "--database", str(db), "big")["partly"] == "purged"

    handle, store, _ = await writer_database(url)
    try:
        await Cleanup(config, Direct(handle, store), None).run(config.cleanup.policies[0])
    finally:
        await handle.shutdown()
    assert rows(db, "select state, frames, acted from cleanup_runs order by id") == [
        ("interrupted", 3 * PURGE_CHUNK, 0),
        ("done", total - 3 * PURGE_CHUNK, 1),
    ]
    assert rows(db, "select count(*) from sessions") == [(0,)]
    assert rows(db, "select count(*) from frames") == [(0,)]


def test_a_run_whose_every_action_failed_says_why(tmp_path: Path) -> None:
    """A purge that failed for disk space recorded runs with error null."""
    db = tmp_path / "recorder.db"
    asyncio.run(record(f"sqlite:///{db}", [(now_us() - DAY, IN, status("s", "completed"))]))
    with sqlite3.connect(db) as conn:  # the database refuses, as a full disk would
        conn.execute(
            "CREATE TRIGGER refuse BEFORE DELETE ON frames "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    config = str(config_file(tmp_path, db, policy("bye", "purge", 'status = ["completed"]')))
    (run,) = cli_json("cleanup", "run", "--config", config)
    assert run["acted"] == 0
    assert run["error"].startswith("every action failed (1); the first: IntegrityError")
    assert "database or disk is full" in run["error"]


async def test_compaction_goes_in_bounded_steps(tmp_path: Path) -> None:
    """Compacting a session of a million chunks held them all in the database process
    (1 GB) and stalled ingest for 13.5 s. Steps of the purge's size, and text that
    streams into its frame: memory stays flat whatever the session's length."""
    db = tmp_path / "recorder.db"
    url = f"sqlite:///{db}"
    base = now_us() - DAY
    pieces = [f"{i:06d}" + "y" * 994 for i in range(12_000)]  # 12 MB of text
    script = [(base, IN, status("long", "running"))]
    script += [(base + i, IN, chunk("long", text)) for i, text in enumerate(pieces, 1)]
    script += [(base + len(pieces) + 1, IN, status("long", "completed"))]
    await record(url, script)
    config = load_config(
        config_file(tmp_path, db, policy("fold", "compact", 'status = ["completed"]')), env={}
    )
    handle, store, _ = await writer_database(url)
    try:
        tracemalloc.start()
        actor = Cleanup(config, Direct(handle, store), None).actor
        run = Run(config.cleanup.policies[0], "cli", False, now_us(), through_id=2**62)
        done = await Compact().act(actor, run, "long")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        await handle.shutdown()
    assert done == {"result": f"compacted {len(pieces)} chunks into 6 frames", "done": True}
    # Flat: about 11 MiB for 6 000, 12 000 or 24 000 chunks (a step and one frame).
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB"
    texts = [
        json.loads(payload)["data"]["text"]
        for (payload,) in rows(
            db, "select payload from frames where type = 'stream_compacted' order by id"
        )
    ]
    # A frame takes appended text until it holds a MiB: steps of 2 MB give 2 to 3 MB.
    assert len(texts) == 6 and all(len(t) < 4 * 2**20 for t in texts)
    assert "".join(texts) == "".join(pieces)
    assert rows(db, "select count(*) from frames where type = 'stream_chunk'") == [(0,)]
    assert rows(db, "select cleanup_state, frame_count from sessions") == [(None, 6 + 2)]
    (count,) = rows(db, "select count(*) from frames")[0]
    assert rows(db, "select sum(frame_count) from connections") == [(count,)]
    assert rows(db, "select sum(frames) from frame_days") == [(count,)]
    (size,) = rows(db, "select sum(size) from frames")[0]
    assert rows(db, "select sum(bytes) from frame_days") == [(size,)]
