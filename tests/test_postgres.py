"""The same schema, migrations and writer on PostgreSQL (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from recorder.cli import cli
from recorder.config import Config, load_config
from recorder.db.migrations import head_revision
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, OUT, Frame
from recorder.service.lifecycle import Service
from recorder.times import now_us
from tests.conftest import pg_admin, running
from tests.helpers import cli_json_lines, frame_bytes, recorder_process

FRAMES: list[tuple[str, bytes, bool]] = [
    (IN, b'{"type":"health_check_response","healthy":true}', True),
    (
        IN,
        json.dumps(
            {
                "type": "session_status_update",
                "session": {
                    "id": "s1",
                    "status": "running",
                    "task": {"id": "t1", "description": "d"},
                },
            }
        ).encode(),
        True,
    ),
    (
        OUT,
        json.dumps(
            {"type": "execute_task", "payload": {"sessionId": "s1", "task": "Analyze"}}
        ).encode(),
        True,
    ),
    (
        IN,
        json.dumps({"type": "task_completed", "sessionId": "s1", "taskId": "Analyze"}).encode(),
        True,
    ),
    (IN, b'{"type":"x","nul":"\x00"}', True),
    (IN, b"\xff\xfe", True),
    (IN, b"\x00binary", False),
    (IN, json.dumps({"type": "sessions_list", "sessions": []}).encode(), True),
]


def test_postgres_gets_the_same_schema_and_every_frame(pg_url: str) -> None:
    async def record() -> None:
        writer = Writer(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        before, after = await writer.start()
        assert (before, after) == (None, head_revision())
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://127.0.0.1:8787")
        for i, (direction, data, is_text) in enumerate(FRAMES, 1):
            await writer.put(Frame(cid, i, direction, 1_795_692_537_000_000 + i, i, is_text, data))
        await writer.close_connection(cid, code=1000, reason="bye", closed_by="remote")
        writer.stop()
        await task
        await writer.close()

    asyncio.run(record())
    records = cli_json_lines(["frames", "--database", pg_url, "--format", "jsonl", "--limit", "0"])
    assert [frame_bytes(r) for r in records] == [data for _, data, _ in FRAMES]
    assert [r["direction"] for r in records] == [d for d, _, _ in FRAMES]
    sessions = cli_json_lines(["sessions", "--database", pg_url, "--json"])
    # The empty sessions_list at the end marks the session the index believed active.
    assert [(s["id"], s["status"]) for s in sessions] == [("s1", "unknown")]
    info = cli_json_lines(["status", "--database", pg_url, "--json"])[0]
    assert info["frames"] == len(FRAMES) and info["sessions"] == 1 and not info["connected"]
    # The postmortem commands read PostgreSQL with the same SQL.
    result = CliRunner().invoke(cli, ["show", "--database", pg_url, "s1", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["by_type"] == {"session_status_update": 1, "execute_task": 1, "task_completed": 1}
    stats = json.loads(CliRunner().invoke(cli, ["stats", "--database", pg_url, "--json"]).stdout)
    assert sum(stats["frames_by_type"].values()) == len(FRAMES)
    by_task = cli_json_lines(
        ["frames", "--database", pg_url, "--task", "Analyze", "--format", "jsonl"]
    )
    assert [r["type"] for r in by_task] == ["execute_task", "task_completed"]
    since = cli_json_lines(
        [
            "frames",
            "--database",
            pg_url,
            "--since",
            "2026-11-26T11:28:57.000004Z",
            "--format",
            "jsonl",
        ]
    )
    assert [r["seq"] for r in since] == [4, 5, 6, 7, 8]
    assert info["database_bytes"] > 0


def test_cleanup_purges_and_compacts_on_postgres(pg_url: str, tmp_path: Path) -> None:
    def status(sid: str, state: str) -> bytes:
        return json.dumps(
            {"type": "session_status_update", "session": {"id": sid, "status": state}}
        ).encode()

    def chunk(sid: str, text: str) -> bytes:
        return json.dumps(
            {"type": "stream_chunk", "data": {"sessionId": sid, "chunk": text}}
        ).encode()

    async def record() -> None:
        writer = Writer(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        await writer.start()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("proxy", "ws://127.0.0.1:8787/", "127.0.0.1:5000")
        script = [
            status("a", "running"),
            chunk("a", "one "),
            chunk("a", "two"),
            status("a", "completed"),
        ]
        script += [status("b", "running"), chunk("b", "x"), status("b", "failed")]
        for i, data in enumerate(script, 1):
            await writer.put(Frame(cid, i, IN, 1_795_692_537_000_000 + i, i, True, data))
        await writer.close_connection(cid, code=1000, reason="", closed_by="client")
        writer.stop()
        await task
        await writer.close()

    asyncio.run(record())
    config = tmp_path / "c.toml"
    config.write_text(
        f'[storage]\nurl = "{pg_url}"\n'
        '[[cleanup.policies]]\nname = "squash"\nschedule = "every 1h"\naction = "compact"\n'
        'when = { status = ["completed"] }\n'
        '[[cleanup.policies]]\nname = "bye"\nschedule = "every 1h"\naction = "purge"\n'
        'when = { status = ["failed"] }\n'
    )
    result = CliRunner().invoke(cli, ["cleanup", "run", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    runs = {r["policy"]: r for r in json.loads(result.stdout)}
    assert runs["squash"]["actions"][0]["result"] == "compacted 2 chunks into 1 frames"
    assert runs["bye"]["actions"][0]["result"] == "purged 3 frames"
    frames = cli_json_lines(["frames", "--database", pg_url, "--format", "jsonl", "--limit", "0"])
    assert [f["type"] for f in frames] == [
        "session_status_update",
        "stream_compacted",
        "session_status_update",
    ]
    assert json.loads(frames[1]["payload"])["data"]["text"] == "one two"
    sessions = cli_json_lines(["sessions", "--database", pg_url, "--json"])
    assert [s["id"] for s in sessions] == ["a"]


async def test_named_instances_share_a_database_and_one_name_runs_once(
    pg_url: str, make_config: Callable[..., Config]
) -> None:
    import asyncpg

    def config(name: str) -> Config:
        return make_config("ws://127.0.0.1:9", storage={"url": pg_url, "instance": name})

    async with running(config("a")):
        pass  # migrated; now a row that recorder "b" left open when it died
    conn = await asyncpg.connect(pg_url)

    async def b_row() -> Any:
        return await conn.fetchval("SELECT closed_by FROM connections WHERE instance = 'b'")

    try:
        await conn.execute(
            "INSERT INTO connections (role, url, opened_at_us, frame_count, instance) "
            "VALUES ('link', 'ws://x', 1, 0, 'b')"
        )
        with structlog.testing.capture_logs() as logs:
            async with running(config("a")) as a:
                assert await b_row() is None  # "a" closes only its own rows
                async with running(config("b")) as b:
                    assert await b_row() == "service"  # "b" closes its own
                    # Both run at once; a second "a" refuses.
                    assert await Service(config("a")).run(asyncio.Event()) == 1
    finally:
        await conn.close()
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1 and errors[0].startswith("another recorder named 'a' is running on ")
    assert a.exit_code == 0 and b.exit_code == 0


def test_frames_are_partitioned_by_month_and_written_with_copy(pg_url: str) -> None:
    """Each batch: its frames in one COPY, and its index changes (connection counts,
    sessions, daily tallies) in one statement: each statement is a round trip."""
    import asyncpg
    from sqlalchemy import event

    from recorder.db.connection import AsyncWriterDatabase, WriterDatabase
    from recorder.db.migrations import upgrade_sync
    from recorder.db.partitions import months
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier

    async def scenario() -> tuple[int, list[int], list[str], list[tuple[str, int]], Any]:
        url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
        db = await WriterDatabase.open(url)
        assert isinstance(db, AsyncWriterDatabase)
        await db.run(upgrade_sync)
        store = Store(db.dialect)
        cid = await db.run(store.open_connection, "link", "ws://x", 1)
        statements: list[str] = []
        event.listen(
            db.engine.sync_engine,
            "before_cursor_execute",
            lambda _c, _k, sql, *_: statements.append(sql),
        )
        now = now_us()
        classifier = Classifier()
        per_batch = []
        chunk = b'{"type":"stream_chunk","data":{"sessionId":"s1","chunk":"x"}}'
        for batch in range(3):
            frames = [(cid, batch * 100 + i, IN, now + i, i, True, chunk) for i in range(1, 101)]
            rows, index = classifier.rows_and_index(frames)
            statements.clear()
            await db.run(store.write_batch, rows, index)
            per_batch.append(len(statements))
        await db.shutdown()
        conn = await asyncpg.connect(pg_url)
        try:
            parts = [
                r["relname"]
                for r in await conn.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'frames' ORDER BY 1"
                )
            ]
            placed = [
                (r["tableoid"], r["n"])
                for r in await conn.fetch(
                    "SELECT tableoid::regclass::text AS tableoid, count(*) AS n FROM frames GROUP BY 1"
                )
            ]
            counted = await conn.fetchrow(
                "SELECT (SELECT frame_count FROM connections) AS connection,"
                " (SELECT frame_count FROM sessions WHERE id = 's1') AS session,"
                " (SELECT sum(frames) FROM frame_days) AS days"
            )
        finally:
            await conn.close()
        return store.copies, per_batch, parts, placed, counted

    copies, per_batch, parts, placed, counted = asyncio.run(scenario())
    assert copies == 3  # one COPY per batch
    # The first batch also makes the partitions ahead; then one statement a batch.
    assert per_batch[1:] == [1, 1]
    assert tuple(counted) == (300, 300, 300)
    ahead = [name for name, _, _ in months(now_us(), 3)]
    assert set(ahead) <= set(parts) and "frames_default" in parts
    assert placed == [(ahead[0], 300)]  # this month's partition, not the default one


def test_retention_drops_a_whole_month_on_postgres(pg_url: str, tmp_path: Path) -> None:
    import asyncpg

    from recorder.db.partitions import months

    old = 1_736_000_000_000_000  # 2025-01-04: far past any 30-day retention
    (name, low, high) = months(old, 1)[0]

    async def record() -> None:
        writer = Writer(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        await writer.start()  # migrated: frames is partitioned
        conn = await asyncpg.connect(pg_url)
        await conn.execute(
            f'CREATE TABLE "{name}" PARTITION OF frames FOR VALUES FROM ({low}) TO ({high})'
        )
        await conn.close()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://x")
        script = [
            json.dumps(
                {"type": "session_status_update", "session": {"id": "old", "status": "running"}}
            ),
            json.dumps({"type": "stream_chunk", "data": {"sessionId": "old", "chunk": "x"}}),
            json.dumps(
                {"type": "session_status_update", "session": {"id": "old", "status": "completed"}}
            ),
        ]
        for i, text in enumerate(script, 1):
            await writer.put(Frame(cid, i, IN, old + i, i, True, text.encode()))
        await writer.close_connection(cid, code=1000, closed_by="remote")
        writer.stop()
        await task
        await writer.close()

    asyncio.run(record())
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nurl = "{pg_url}"\nretention = "30d"\n')
    result = CliRunner().invoke(cli, ["cleanup", "run", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)
    assert run["policy"] == "storage.retention"
    assert run["actions"][0] == {"partition": name, "result": "dropped 3 frames", "done": True}

    async def left() -> tuple[Any, Any, Any]:
        conn = await asyncpg.connect(pg_url)
        try:
            return (
                await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname = $1", name),
                await conn.fetchval("SELECT count(*) FROM sessions"),
                await conn.fetchval("SELECT count(*) FROM connections"),
            )
        finally:
            await conn.close()

    assert asyncio.run(left()) == (0, 0, 0)


def test_both_databases_hold_the_same_rows_for_the_same_conversation(
    pg_url: str, tmp_path: Path
) -> None:
    """The same frames through the writer's own code into SQLite and PostgreSQL: every
    column of every table the writer fills is equal. PostgreSQL takes the batches
    together, as the database process does with batches that queued up: the rows are
    those of batches written one at a time."""
    import sqlite3

    import asyncpg

    from recorder.db.connection import WriterDatabase
    from recorder.db.migrations import upgrade_sync
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier

    sid = "session_1795692537464_eeayv91i6"
    conversation: list[tuple[str, bytes, bool]] = [
        *FRAMES,
        (
            OUT,
            json.dumps(
                {
                    "type": "spawn_session",
                    "payload": {"orchestratorId": "vp_1", "task": {"description": "D"}},
                }
            ).encode(),
            True,
        ),
        (
            IN,
            json.dumps(
                {
                    "type": "session_status_update",
                    "session": {
                        "id": sid,
                        "orchestratorId": "vp_1",
                        "status": "running",
                        "startedAt": "2026-11-26T11:28:57.464Z",
                        "task": {"id": "task_1", "description": "D"},
                    },
                }
            ).encode(),
            True,
        ),
        (
            IN,
            json.dumps(
                {"type": "stream_chunk", "data": {"sessionId": sid, "chunk": "é 🎉"}}
            ).encode(),
            True,
        ),
        (
            IN,
            json.dumps(
                {
                    "type": "session_spawned",
                    "session": {
                        "id": sid,
                        "orchestratorId": "vp_1",
                        "status": "completed",
                        "endedAt": "2026-11-26T11:28:58.000Z",
                        "task": {"id": "task_1", "description": "D"},
                    },
                }
            ).encode(),
            True,
        ),
        (
            OUT,
            json.dumps(
                {"type": "session_status", "payload": {"sessionId": "session_nope"}}
            ).encode(),
            True,
        ),
        (IN, b'{"type":"error","error":"Session not found: session_nope"}', True),
        # A known session changed by a frame that does not create one (an update),
        # then news that must replace what is stored (status, error) beside news that
        # must not (the first task's description).
        (
            OUT,
            json.dumps(
                {"type": "execute_task", "payload": {"sessionId": "s1", "task": "Second"}}
            ).encode(),
            True,
        ),
        (
            IN,
            json.dumps(
                {
                    "type": "session_status_update",
                    "session": {
                        "id": "s1",
                        "status": "failed",
                        "task": {"id": "t1", "description": "Second"},
                    },
                }
            ).encode(),
            True,
        ),
        (
            IN,
            json.dumps(
                {"type": "task_failed", "sessionId": "s1", "taskId": "Second", "error": "boom"}
            ).encode(),
            True,
        ),
        # Strings no text column holds (NUL, lone surrogates): left out of the index,
        # the frames kept.
        (IN, b'{"type":"x\\u0000","sessionId":"s\\u0000","error":"\\ud800"}', True),
        (IN, b'{"type":"error","sessionId":"s1","error":"a\\u0000b"}', True),
        # Stopped after it completed: it ended when it completed, on the recorder's
        # clock (finished_us), whatever the daemon's endedAt says.
        (
            IN,
            json.dumps(
                {
                    "type": "session_status_update",
                    "session": {"id": sid, "status": "stopped", "endedAt": "2126-01-01T00:00:00Z"},
                }
            ).encode(),
            True,
        ),
        # Stopped after it completed: it ended when it completed, on the recorder's
        # clock (finished_us), whatever the daemon's endedAt says.
        (
            IN,
            json.dumps(
                {
                    "type": "session_status_update",
                    "session": {"id": sid, "status": "stopped", "endedAt": "2126-01-01T00:00:00Z"},
                }
            ).encode(),
            True,
        ),
    ]
    tables = {
        "frames": "id",
        "sessions": "id",
        "tasks": "session_id, task_id",
        "connections": "id",
        "frame_days": "day_us, type, direction",
    }

    async def write(url: str, together: bool) -> None:
        db = await WriterDatabase.open(url)
        await db.run(upgrade_sync)
        store = Store(db.dialect)
        cid = await db.run(
            store.open_connection, "proxy", "ws://x/", 1_795_692_537_000_000, "127.0.0.1:1"
        )
        classifier = Classifier()
        frames = [
            (cid, i, d, 1_795_692_537_000_000 + i, i, t, data)
            for i, (d, data, t) in enumerate(conversation, 1)
        ]
        # Several batches: attribution across them.
        batches = [
            classifier.rows_and_index(frames[start : start + 5])
            for start in range(0, len(frames), 5)
        ]
        if together:
            await db.run(store.write_batches, batches[:2])
            await db.run(store.write_batches, batches[2:])
        else:
            for rows, index in batches:
                await db.run(store.write_batch, rows, index)
        await db.shutdown()

    sqlite_path = tmp_path / "same.db"
    asyncio.run(write(f"sqlite+aiosqlite:///{sqlite_path}", together=False))
    asyncio.run(write(pg_url.replace("postgresql://", "postgresql+asyncpg://"), together=True))

    def normal(value: Any) -> Any:
        return bytes(value) if isinstance(value, memoryview) else value

    async def from_postgres(table: str, order: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}")
            return [tuple(normal(v) for v in row.values()) for row in rows]
        finally:
            await conn.close()

    with sqlite3.connect(sqlite_path) as lite:
        for table, order in tables.items():
            ours = [
                tuple(normal(v) for v in row)
                for row in lite.execute(f"SELECT * FROM {table} ORDER BY {order}")
            ]
            theirs = asyncio.run(from_postgres(table, order))
            assert ours == theirs, table
            assert ours, table
        # The recorder's clock: the frame that said "completed" was the 4th after FRAMES.
        (finished,) = lite.execute(
            "SELECT finished_us FROM sessions WHERE id = ?", (sid,)
        ).fetchone()
        assert finished == 1_795_692_537_000_000 + len(FRAMES) + 4


async def test_max_db_size_on_postgres_purges_only_what_it_must(pg_url: str) -> None:
    """PostgreSQL's size does not shrink as rows go: the purge counts what it deleted
    instead of purging every finished session while waiting for the size to drop."""
    from recorder.cleanup.jobs import MAX_SIZE, Cleanup, Direct
    from recorder.config import load_config
    from recorder.db.connection import WriterDatabase
    from recorder.db.space import database_bytes
    from recorder.db.write import Store

    url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
    writer = Writer(url)
    await writer.start()
    task = asyncio.create_task(writer.run())
    cid = await writer.open_connection("link", "ws://127.0.0.1:8787/", None)
    seq = 0
    for n, sid in enumerate(["old", "middle", "new"]):
        for state, text in (("running", "x" * 100_000), ("completed", "")):
            seq += 1
            body = {"type": "session_status_update", "session": {"id": sid, "status": state}}
            if text:
                body["note"] = text
            at = 1_795_692_537_000_000 + n * 60_000_000 + seq
            await writer.put(Frame(cid, seq, IN, at, seq, True, json.dumps(body).encode()))
    await writer.close_connection(cid, code=1000, reason="", closed_by="client")
    writer.stop()
    await task
    await writer.close()

    handle = await WriterDatabase.open(url)
    try:
        store = Store(handle.dialect)
        size = await handle.run(database_bytes)
        config = load_config(None, env={"RECORDER_DATABASE_URL": pg_url})
        config = dataclasses.replace(
            config, storage=dataclasses.replace(config.storage, max_db_size=f"{size - 50_000}B")
        )
        await Cleanup(config, Direct(handle, store), None).keep_under_size()
    finally:
        await handle.shutdown()
    sessions = await asyncio.to_thread(
        cli_json_lines, ["sessions", "--database", pg_url, "--format", "jsonl"]
    )
    assert sorted(s["id"] for s in sessions) == ["middle", "new"]
    runs = await asyncio.to_thread(
        cli_json_lines, ["cleanup", "history", "--database", pg_url, "--format", "jsonl"]
    )
    assert [(r["policy"], r["matched"], r["acted"], r["error"]) for r in runs] == [
        (MAX_SIZE, 1, 1, None)
    ]


async def test_the_partitioning_migration_goes_down_and_up_again_with_the_frames(
    pg_url: str,
) -> None:
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from recorder.db.migrations import alembic_config, upgrade

    url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
    writer = Writer(url)
    await writer.start()
    task = asyncio.create_task(writer.run())
    cid = await writer.open_connection("link", "ws://127.0.0.1:8787/", None)
    for seq, (direction, data, is_text) in enumerate(FRAMES, 1):
        await writer.put(
            Frame(cid, seq, direction, 1_795_692_537_000_000 + seq, seq, is_text, data)
        )
    await writer.close_connection(cid, code=1000, reason="", closed_by="client")
    writer.stop()
    await task
    await writer.close()

    def down(connection: Any) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0004")

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(down)
        async with engine.connect() as conn:
            kind = await conn.scalar(
                text("SELECT relkind::text FROM pg_class WHERE relname = 'frames'")
            )
            assert kind == "r"  # a plain table again
        assert await upgrade(engine) == ("0004", head_revision())
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM frames")) == len(FRAMES)
            kind = await conn.scalar(
                text("SELECT relkind::text FROM pg_class WHERE relname = 'frames'")
            )
            assert kind == "p"
    finally:
        await engine.dispose()


def test_each_named_recorder_acts_only_on_the_sessions_it_recorded(pg_url: str) -> None:
    """Two recorders of two daemons share one database: a sessions_list from daemon A
    marks lost only A's sessions, the active sessions A asks after on reconnect are
    its own, and A's cleanup policies never match B's sessions."""
    import asyncpg

    from recorder.cleanup.policy import Conditions, Policy
    from recorder.db.cleanup import match_policy
    from recorder.db.connection import WriterDatabase
    from recorder.db.migrations import upgrade_sync
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier

    def status(sid: str) -> bytes:
        return json.dumps(
            {"type": "session_status_update", "session": {"id": sid, "status": "running"}}
        ).encode()

    async def scenario() -> tuple[list[str], list[str], dict[str, str], list[str]]:
        url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
        db = await WriterDatabase.open(url)
        await db.run(upgrade_sync)
        a, b = Store(db.dialect, "a"), Store(db.dialect, "b")
        now = now_us()
        for store, sids in ((a, ["a1", "a2"]), (b, ["b1"])):
            cid = await db.run(store.open_connection, "link", "ws://x", 1)
            frames = [(cid, i, IN, now + i, i, True, status(s)) for i, s in enumerate(sids, 1)]
            rows, index = Classifier().rows_and_index(frames)
            await db.run(store.write_batch, rows, index)
        active = (await db.run(a.active_session_ids), await db.run(b.active_session_ids))
        # Daemon A now lists only a2: a1 is lost; b1, not A's, stays running.
        listing = b'{"type":"sessions_list","sessions":[{"id":"a2","status":"running"}]}'
        rows, index = Classifier().rows_and_index([(1, 9, IN, now + 10**6, 9, True, listing)])
        await db.run(a.write_batch, rows, index)
        stop = Policy("stale", "every 1h", "stop", Conditions(status=("running", "unknown")))
        decided = await db.run(match_policy, stop, now + 10**7, 0.0, False, "a")
        await db.shutdown()
        conn = await asyncpg.connect(pg_url)
        try:
            statuses = dict(await conn.fetch("SELECT id, status FROM sessions"))
        finally:
            await conn.close()
        return sorted(active[0]), active[1], statuses, sorted(d.session_id for d in decided)

    active_a, active_b, statuses, decided = asyncio.run(scenario())
    assert (active_a, active_b) == (["a1", "a2"], ["b1"])
    assert statuses == {"a1": "unknown", "a2": "running", "b1": "running"}
    assert decided == ["a1", "a2"]


async def test_cleanup_run_asks_the_running_recorder_its_configuration_names(
    pg_url: str, tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    """On PostgreSQL too, `recorder cleanup run` finds the running recorder (its
    advisory lock) and has the run done there, by that recorder and no other."""
    import asyncpg

    policy = '[[cleanup.policies]]\nname = "p"\nschedule = "every 1h"\naction = "purge"\n'

    def config(name: str) -> Config:
        make_config("ws://127.0.0.1:9", storage={"url": pg_url, "instance": name})
        path = tmp_path / "config.toml"
        path.write_text(path.read_text() + '[cleanup]\npoll = "0.2s"\n' + policy)
        return load_config(path, env={})

    cli_config = tmp_path / "b.toml"
    cli_config.write_text(f'[storage]\nurl = "{pg_url}"\ninstance = "b"\n' + policy)
    async with running(config("a")), running(config("b")):
        proc = await recorder_process("cleanup", "run", "--config", str(cli_config), "--json")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "asked the running recorder (PID " in err.decode()
    (run,) = json.loads(out)
    assert (run["trigger"], run["instance"]) == ("request", "b")
    conn = await asyncpg.connect(pg_url)
    try:
        asked = await conn.fetch("SELECT instance, done_us FROM cleanup_requests")
    finally:
        await conn.close()
    assert [(r["instance"], r["done_us"] is not None) for r in asked] == [("b", True)]


def test_the_index_by_type_leaves_out_stream_chunks_and_still_finds_the_rare_types(
    pg_url: str,
) -> None:
    """Migration 0008: stream_chunk frames (most of a firehose) get no entry in the
    index by type on PostgreSQL; a lookup of a rare type still uses it."""
    import asyncpg

    from recorder.db.engine import create_engine
    from recorder.db.migrations import upgrade

    async def scenario() -> tuple[str, str]:
        engine = create_engine(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        await upgrade(engine)
        await engine.dispose()
        conn = await asyncpg.connect(pg_url)
        try:
            definition = await conn.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_frames_type_id'"
            )
            await conn.execute("SET enable_seqscan = off")  # an empty table: any plan is cheap
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN SELECT id FROM frames WHERE type = $1 AND id > $2",
                    "spawn_session",
                    0,
                )
            )
        finally:
            await conn.close()
        return definition, plan

    definition, plan = asyncio.run(scenario())
    assert definition.endswith("WHERE (type <> 'stream_chunk'::text)")
    assert "type_id_idx" in plan


def test_frames_by_receive_time_use_a_block_range_index(pg_url: str) -> None:
    """Migration 0009: on PostgreSQL the index by receive time is BRIN (one entry per
    run of pages, not one per frame), and `frames --since` still finds its pages by it."""
    import asyncpg

    from recorder.db.engine import create_engine
    from recorder.db.migrations import upgrade

    async def scenario() -> tuple[str, str]:
        engine = create_engine(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        await upgrade(engine)
        await engine.dispose()
        conn = await asyncpg.connect(pg_url)
        try:
            definition = await conn.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_frames_received_at_us'"
            )
            # A month of frames, a minute apart: the last hour is a few pages.
            start = now_us() - 30 * 86_400_000_000
            await conn.execute(
                "INSERT INTO frames (connection_id, seq, direction, received_at_us,"
                " monotonic_ns, opcode, size, type, payload) SELECT 1, g, 'in',"
                " $1::bigint + g * 60000000::bigint, g, 1, 2, 'x', '{}' FROM generate_series(0, 43199) g",
                start,
            )
            await conn.execute("ANALYZE frames")
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN SELECT id FROM frames WHERE received_at_us >= $1",
                    start + 43_140 * 60_000_000,
                )
            )
        finally:
            await conn.close()
        return definition, plan

    definition, plan = asyncio.run(scenario())
    assert "USING brin (received_at_us)" in definition
    assert "Bitmap Index Scan on frames_" in plan and "received_at_us_idx" in plan, plan


@pytest.mark.parametrize(
    ("bad", "refusal"),
    [
        ("a\x00b", "CharacterNotInRepertoireError (SQLSTATE 22021)"),
        ("\ud800", "UnicodeEncodeError"),
    ],
)
def test_a_value_postgres_refuses_costs_the_index_not_the_frames(
    pg_url: str, bad: str, refusal: str
) -> None:
    """PostgreSQL refuses NUL in text on the server, and asyncpg a lone surrogate on
    the client: either way the frames are written without their index, once."""
    from tests.faults.test_writer_faults import check_refused_values_leave_the_index_out

    url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
    stored, logged = asyncio.run(check_refused_values_leave_the_index_out(url, bad))
    assert logged == refusal
    assert [(seq, type_, sid, count) for seq, type_, sid, _, count in stored] == [
        (1, None, None, 2),
        (2, "x", "s2", 2),
    ]


@pytest.mark.parametrize("btree", [False, True])
def test_a_task_described_at_any_length_is_recorded_and_found(pg_url: str, btree: bool) -> None:
    """A task's description is the prompt the client sent. A B-tree entry must fit in
    a third of a page: a longer description failed its batch on every retry and the
    recording stopped (found by fuzzing). Migration 0010 indexes it by hash. With the
    B-tree put back, the limit refuses the batch (SQLSTATE 54000) and the writer's
    defence keeps its frames, without their index."""
    import random
    import string

    # 30 000 characters that do not compress (an index entry is compressed first).
    prompt = "".join(random.Random(13).choices(string.ascii_letters + " .", k=30_000))
    status = {
        "type": "session_status_update",
        "session": {"id": "s1", "status": "running", "task": {"id": "t1", "description": prompt}},
    }
    chunk = {"type": "stream_chunk", "data": {"sessionId": "s1", "taskId": "t1", "chunk": "ok"}}
    sent = [json.dumps(status).encode(), json.dumps(chunk).encode()]

    async def record() -> None:
        writer = Writer(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        await writer.start()
        if btree:
            await pg_admin("DROP INDEX ix_tasks_description", pg_url)
            await pg_admin("CREATE INDEX ix_tasks_description ON tasks (description)", pg_url)
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://127.0.0.1:8787")
        for seq, data in enumerate(sent, 1):
            await writer.put(Frame(cid, seq, IN, now_us(), seq, True, data))
        writer.stop()
        await asyncio.wait_for(task, 30)
        await writer.close()

    asyncio.run(record())
    every = cli_json_lines(["frames", "--database", pg_url, "--format", "jsonl"])
    assert [frame_bytes(r) for r in every] == sent
    found = cli_json_lines(["frames", "--database", pg_url, "--task", prompt, "--format", "jsonl"])
    if btree:
        assert found == []  # kept without their index
        return
    assert [frame_bytes(r) for r in found] == sent
    tasks = cli_json_lines(["tasks", "--database", pg_url, "--session", "s1", "--format", "jsonl"])
    assert [(t["task_id"], t["description"]) for t in tasks] == [("t1", prompt)]


def test_a_dropped_server_connection_is_reopened_and_nothing_is_lost(pg_url: str) -> None:
    """The server ends the writer's connection (a restart, a failover, a pooler's idle
    timeout: here pg_terminate_backend, between batches and again while batches are in
    flight). The batch is retried on a new connection: every frame once, in order."""
    import asyncpg

    async def kill_writer_backends() -> int:
        conn = await asyncpg.connect(pg_url)
        try:
            killed = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        return len(killed)

    async def record() -> int:
        writer = Writer(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        await writer.start()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://127.0.0.1:8787")
        sent = 0

        async def send(n: int) -> None:
            nonlocal sent
            for seq in range(sent + 1, sent + n + 1):
                data = b'{"type":"stream_chunk","data":{"sessionId":"s1","n":%d}}' % seq
                await writer.put(Frame(cid, seq, IN, now_us(), seq, True, data))
            sent += n

        killed = 0
        for _ in range(3):
            await send(500)
            # Committed, so the writer is connected: the kill finds its backend.
            await asyncio.wait_for(writer.flush(), 30)
            killed += await kill_writer_backends()
        await send(500)
        killed += await kill_writer_backends()  # while batches are in flight
        await send(500)
        await asyncio.wait_for(writer.flush(), 30)
        writer.stop()
        await asyncio.wait_for(task, 30)
        await writer.close()
        return killed

    killed = asyncio.run(record())
    assert killed >= 3
    records = cli_json_lines(["frames", "--database", pg_url, "--format", "jsonl", "--limit", "0"])
    assert [r["seq"] for r in records] == list(range(1, 2501))
    sessions = cli_json_lines(["sessions", "--database", pg_url, "--json"])
    assert [(s["id"], s["frame_count"]) for s in sessions] == [("s1", 2500)]
