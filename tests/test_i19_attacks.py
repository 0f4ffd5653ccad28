"""Attacks on what issue 19 built, each found by trying it as an outsider would:
hostile recordings written by the writer's own code, a hostile daemon or client on
loopback. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import orjson
from click.testing import CliRunner

from recorder.cli import cli
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN
from tests.helpers import writer_database

T0_US = 1_795_692_537_000_000
SID = "session_1795692537464_attacked"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


async def recorded(db: Path, frames: list[tuple[str, bytes]]) -> None:
    """``frames`` (direction, data), a millisecond apart on one link, recorded by the
    writer's own code."""
    store_db, store, cid = await writer_database(f"sqlite:///{db}")
    rows = [
        (cid, i, d, T0_US + i * 1000, i * 1_000_000, True, data)
        for i, (d, data) in enumerate(frames, 1)
    ]
    classifier = Classifier()
    for start in range(0, len(rows), 500):
        batch, index = classifier.rows_and_index(rows[start : start + 500])
        await store_db.run(store.write_batch, batch, index)
    await store_db.shutdown()


def session_frame(kind: str, state: str) -> bytes:
    return json.dumps({"type": kind, "session": {"id": SID, "status": state}}).encode()


# --- show: the sessions_list replies that named the session ---------------------------


def test_show_reads_a_big_daemons_listings_at_the_speed_of_parsing_them(
    tmp_path: Path,
) -> None:
    """Stall. `show` reads every sessions_list reply that named the session over its
    span, and the recorder keeps seeing a finished session for as long as the daemon
    lists it. Each reply was read with read_object, which tames the whole object
    (every string of every entry) once it holds more than 64 brackets: a daemon with
    5 000 sessions, polled 1 000 times, made `show` take 22 s for one listed entry
    a time. Only the session's own entry is kept, so only it is tamed now."""
    others = [
        {"id": f"session_other_{k}", "status": "completed", "task": {"id": "t", "description": "x"}}
        for k in range(3000)
    ]
    listing = json.dumps(
        {"type": "sessions_list", "sessions": [*others, {"id": SID, "status": "completed"}]}
    ).encode()
    unlisted = {"id": f"{SID}_unlisted", "status": "completed"}
    frames = [
        (IN, json.dumps({"type": "session_status_update", "session": unlisted}).encode()),
        (IN, session_frame("session_spawned", "running")),
        (IN, session_frame("session_status_update", "completed")),
    ]
    listings = 100
    frames += [(IN, listing)] * listings
    db = tmp_path / "r.db"
    asyncio.run(recorded(db, frames))

    started = time.perf_counter()
    for _ in range(listings):
        orjson.loads(listing)
    parse = time.perf_counter() - started

    took = {}
    for sid in (unlisted["id"], SID):
        started = time.perf_counter()
        story = json.loads(invoke("show", "--database", str(db), sid, "--json"))
        took[sid] = time.perf_counter() - started
    assert story["connections"][0]["listed"] == listings
    listed = took[SID] - took[unlisted["id"]]
    assert listed < 2 * parse, (listed, parse)
