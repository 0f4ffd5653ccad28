"""Cleanup actions on a database with known sessions: purge, compact, pins, keep_last,
dry runs, the grace window, the size limit, and giving the space back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.config import load_config
from recorder.db.migrations import upgrade_sync
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from tests.cleanup_scripts import chunk, status

T0 = 1_795_692_537_000_000
# Per session: its final status, and how many chunks it streamed.
SESSIONS = {"s_failed": ("failed", 30), "s_done": ("completed", 20), "s_live": ("running", 10)}


def build(path: Path) -> None:
    """Three sessions on one UI conversation, written by the writer's own code."""

    async def fill() -> None:
        db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{path}")
        await db.connect()
        await db.run(upgrade_sync)
        store = Store(db.dialect)
        cid = await db.run(
            store.open_connection, "proxy", "ws://127.0.0.1:8787/", T0, "127.0.0.1:5000"
        )
        frames: list[tuple[int, int, str, int, int, bool, bytes]] = []

        def add(direction: str, data: bytes) -> None:
            n = len(frames) + 1
            frames.append((cid, n, direction, T0 + n * 1000, n * 1_000_000, True, data))

        add(IN, b'{"type":"health_check_response","healthy":true}')
        for sid, (final, chunks) in SESSIONS.items():
            add(IN, status(sid, "running"))
            add(OUT, json.dumps({"type": "session_status", "payload": {"sessionId": sid}}).encode())
            for i in range(chunks):
                add(IN, chunk(sid, f"{sid}:{i} " + "x" * 2000))
            add(IN, status(sid, final))
        rows, index = Classifier().rows_and_index(frames)
        await db.run(store.write_batch, rows, index)
        await db.shutdown()

    asyncio.run(fill())


def table(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql, params))


def configured(tmp_path: Path, db: Path, *policies: dict[str, Any], extra: str = "") -> Path:
    text = f'[storage]\nurl = "sqlite:///{db}"\n[cleanup]\n{extra}\n'
    for p in policies:
        when = ", ".join(f"{k} = {json.dumps(v)}" for k, v in p.get("when", {}).items())
        text += (
            f'[[cleanup.policies]]\nname = "{p["name"]}"\nschedule = "{p.get("schedule", "every 1h")}"\n'
            f'action = "{p["action"]}"\nkeep_last = {p.get("keep_last", 0)}\n'
            f"dry_run = {str(p.get('dry_run', False)).lower()}\nwhen = {{ {when} }}\n"
        )
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def cleanup_run(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["cleanup", "run", "--config", str(config), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "recorder.db"
    build(path)
    return path


def test_purge_removes_exactly_the_matched_sessions(db: Path, tmp_path: Path) -> None:
    kept_before = table(
        db, "select id, payload from frames where session_id in ('s_done', 's_live') order by id"
    )
    config = configured(
        tmp_path, db, {"name": "bye", "action": "purge", "when": {"status": ["failed", "running"]}}
    )
    (run,) = cleanup_run(config)
    assert (run["trigger"], run["matched"], run["acted"]) == ("cli", 2, 1)
    assert {a["session"]: a["result"] for a in run["actions"]} == {
        "s_failed": "purged 33 frames",  # two status frames, a request, 30 chunks
        "s_live": "active",  # never a session that is still running
    }
    assert table(db, "select count(*) from frames where session_id = 's_failed'") == [(0,)]
    assert table(db, "select id from sessions order by id") == [("s_done",), ("s_live",)]
    assert table(db, "select count(*) from tasks where session_id = 's_failed'") == [(0,)]
    after = table(
        db, "select id, payload from frames where session_id in ('s_done', 's_live') order by id"
    )
    assert after == kept_before
    # The rollups still add up to what is stored.
    (count,) = table(db, "select count(*) from frames")[0]
    assert table(db, "select sum(frame_count) from connections") == [(count,)]
    assert table(db, "select sum(frames) from frame_days") == [(count,)]
    history = json.loads(
        CliRunner().invoke(cli, ["cleanup", "history", "--config", str(config), "--json"]).stdout
    )
    assert [h["id"] for h in history] == [run["id"]]


def test_compact_keeps_every_other_frame_and_the_text(db: Path, tmp_path: Path) -> None:
    others = table(db, "select id, payload from frames where type != 'stream_chunk' order by id")
    chunks = [
        json.loads(p)["data"]["chunk"]
        for (p,) in table(
            db,
            "select payload from frames where session_id = 's_done' and type = 'stream_chunk' order by id",
        )
    ]
    config = configured(
        tmp_path, db, {"name": "squash", "action": "compact", "when": {"status": ["completed"]}}
    )
    (run,) = cleanup_run(config)
    assert run["actions"] == [
        {"session": "s_done", "result": "compacted 20 chunks into 1 frames", "done": True}
    ]
    compacted = table(db, "select payload from frames where type = 'stream_compacted'")
    assert len(compacted) == 1
    data = json.loads(compacted[0][0])["data"]
    assert data["text"] == "".join(chunks) and data["chunks"] == 20
    assert table(
        db, "select count(*) from frames where session_id = 's_done' and type = 'stream_chunk'"
    ) == [(0,)]
    # Every other frame is byte-exact where it was; other sessions keep their chunks.
    assert (
        table(
            db,
            "select id, payload from frames where type not in ('stream_chunk', 'stream_compacted') order by id",
        )
        == others
    )
    assert table(
        db, "select count(*) from frames where session_id = 's_failed' and type = 'stream_chunk'"
    ) == [(30,)]
    (count,) = table(db, "select count(*) from frames")[0]
    assert table(db, "select sum(frame_count) from connections") == [(count,)]
    # Replay plays the compacted text in one piece.
    replay = CliRunner().invoke(cli, ["replay", "--database", str(db), "s_done", "--instant"])
    assert "".join(chunks) in replay.stdout


def test_pins_keep_last_and_a_dry_run_change_nothing(db: Path, tmp_path: Path) -> None:
    config = configured(
        tmp_path,
        db,
        {
            "name": "all",
            "action": "purge",
            "keep_last": 1,
            "when": {"status": ["failed", "completed"]},
        },
    )
    pinned = CliRunner().invoke(cli, ["pin", "--config", str(config), "s_fail"])  # a prefix
    assert pinned.exit_code == 0 and pinned.stdout.strip() == "s_failed pinned"
    before = {p.name: p.read_bytes() for p in sorted(db.parent.iterdir())}
    dry = CliRunner().invoke(
        cli, ["cleanup", "run", "--config", str(config), "--dry-run", "--json"]
    )
    assert dry.exit_code == 0, dry.output
    assert {r["session"]: r["result"] for r in json.loads(dry.stdout)} == {
        "s_done": "kept",  # the newest match: keep_last = 1
        "s_failed": "pinned",
    }
    # Reading may leave SQLite's empty -wal and its -shm beside the file; nothing else.
    after = {p.name: p.read_bytes() for p in sorted(db.parent.iterdir())}
    assert {k: v for k, v in after.items() if k in before} == before
    assert after.get("recorder.db-wal", b"") == b""
    (run,) = cleanup_run(config)
    assert run["acted"] == 0
    assert table(db, "select id from sessions order by id") == [
        ("s_done",),
        ("s_failed",),
        ("s_live",),
    ]
    unpinned = CliRunner().invoke(cli, ["unpin", "--config", str(config), "s_failed"])
    assert unpinned.stdout.strip() == "s_failed unpinned"


def test_the_grace_window_holds_a_purge_back(db: Path, tmp_path: Path) -> None:
    config = configured(
        tmp_path,
        db,
        {"name": "later", "action": "purge", "when": {"status": ["failed"]}},
        extra='grace = "1h"',
    )
    (first,) = cleanup_run(config)
    assert first["actions"] == [{"session": "s_failed", "result": "grace"}]
    assert table(db, "select policy, session_id from cleanup_matches") == [("later", "s_failed")]
    # An hour later (the match's start moved back by hand), it goes.
    with sqlite3.connect(db) as conn:
        conn.execute("update cleanup_matches set first_matched_us = first_matched_us - 3600000001")
    (second,) = cleanup_run(config)
    assert second["actions"][0]["result"] == "purged 33 frames"


def test_a_purge_gives_the_space_back(db: Path, tmp_path: Path) -> None:
    assert table(db, "pragma auto_vacuum") == [(2,)]  # incremental, from creation
    size = db.stat().st_size
    config = configured(
        tmp_path,
        db,
        {"name": "bye", "action": "purge", "when": {"status": ["failed", "completed"]}},
    )
    cleanup_run(config)
    assert db.stat().st_size < size - 40 * 2000  # 50 chunks of 2 kB went


async def test_max_db_size_purges_the_oldest_finished_sessions(db: Path, tmp_path: Path) -> None:
    from recorder.cleanup.jobs import MAX_SIZE, Cleanup, Direct
    from recorder.db.connection import WriterDatabase

    config = load_config(configured(tmp_path, db, extra=""), env={})
    config = dataclasses.replace(
        config, storage=dataclasses.replace(config.storage, max_db_size="1KB")
    )
    handle = await WriterDatabase.open(f"sqlite+aiosqlite:///{db}")
    try:
        cleanup = Cleanup(config, Direct(handle, Store(handle.dialect)), None)
        await cleanup.keep_under_size()
    finally:
        await handle.shutdown()
    # Everything finished went, oldest first; the running session stays.
    assert table(db, "select id from sessions") == [("s_live",)]
    (run,) = table(db, "select policy, matched, acted, error from cleanup_runs")
    assert run[:3] == (MAX_SIZE, 2, 2)
    assert "nothing finished left to purge" in run[3]


def test_db_vacuum_switches_an_older_file_and_refuses_beside_a_running_recorder(
    db: Path,
) -> None:
    import asyncio

    from recorder.db.locks import FileLock

    with sqlite3.connect(db) as conn:  # an older database: made before incremental vacuum
        conn.execute("pragma auto_vacuum = none")
        conn.execute("vacuum")
    assert table(db, "pragma auto_vacuum") == [(0,)]
    lock = FileLock(db, str(db))
    asyncio.run(lock.acquire())
    try:
        refused = CliRunner().invoke(cli, ["db", "vacuum", "--database", str(db)])
    finally:
        asyncio.run(lock.release())
    assert refused.exit_code == 1 and "stop the recorder first" in refused.output
    assert table(db, "pragma auto_vacuum") == [(0,)]
    result = CliRunner().invoke(cli, ["db", "vacuum", "--database", str(db)])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"\d+\.\d MiB -> \d+\.\d MiB\n", result.output)
    assert table(db, "pragma auto_vacuum") == [(2,)]


def test_a_purge_on_an_older_file_ends(db: Path, tmp_path: Path) -> None:
    """A file made before incremental vacuum keeps its free pages: giving space back
    must stop rather than ask for them forever (`recorder db vacuum` frees them)."""
    with sqlite3.connect(db) as conn:
        conn.execute("pragma auto_vacuum = none")
        conn.execute("vacuum")
    config = configured(
        tmp_path, db, {"name": "bye", "action": "purge", "when": {"status": ["failed"]}}
    )
    result = subprocess.run(
        [sys.executable, "-m", "recorder", "cleanup", "run", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert run["acted"] == 1 and run["actions"][0]["result"].startswith("purged ")
    assert table(db, "pragma freelist_count")[0][0] > 0  # still there, for db vacuum
