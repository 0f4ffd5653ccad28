"""The same schema, migrations and writer on PostgreSQL (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.migrations import head_revision
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, Frame
from recorder.times import now_us
from tests.conversations import ONE_TASK_ODD_BYTES as FRAMES
from tests.helpers import cli_json_lines, frame_bytes


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


CHUNK = b'{"type":"stream_chunk","data":{"sessionId":"s1","chunk":"x"}}'


async def three_batches(pg_url: str) -> tuple[int, list[int]]:
    """Three batches of 100 chunks by the writer's own code: the COPYs its Store made,
    and how many statements each batch took."""
    from sqlalchemy import event

    from recorder.db.connection import AsyncWriterDatabase, WriterDatabase
    from recorder.db.migrations import upgrade_sync
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier

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
    for batch in range(3):
        frames = [(cid, batch * 100 + i, IN, now + i, i, True, CHUNK) for i in range(1, 101)]
        rows, index = classifier.rows_and_index(frames)
        statements.clear()
        await db.run(store.write_batch, rows, index)
        per_batch.append(len(statements))
    await db.shutdown()
    return store.copies, per_batch


async def where_the_frames_are(pg_url: str) -> tuple[list[str], list[tuple[str, int]], Any]:
    """The partitions of frames, how many frames each holds, and what the connection's,
    the session's and the days' counts say."""
    import asyncpg

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
    return parts, placed, counted


def test_frames_are_partitioned_by_month_and_written_with_copy(pg_url: str) -> None:
    """Each batch: its frames in one COPY, and its index changes (connection counts,
    sessions, daily tallies) in one statement: each statement is a round trip."""
    from recorder.db.partitions import months

    copies, per_batch = asyncio.run(three_batches(pg_url))
    parts, placed, counted = asyncio.run(where_the_frames_are(pg_url))
    assert copies == 3  # one COPY per batch
    # The first batch also makes the partitions ahead; then one statement a batch.
    assert per_batch[1:] == [1, 1]
    assert tuple(counted) == (300, 300, 300)
    ahead = [name for name, _, _ in months(now_us(), 3)]
    assert set(ahead) <= set(parts) and "frames_default" in parts
    assert placed == [(ahead[0], 300)]  # this month's partition, not the default one


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
