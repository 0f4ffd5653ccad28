"""Recorders sharing one PostgreSQL database, and the cleanup on it (127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from click.testing import CliRunner

from recorder.cli import cli
from recorder.config import Config, load_config
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, Frame
from recorder.service.lifecycle import Service
from recorder.times import now_us
from tests.conftest import running
from tests.helpers import cli_json_lines, recorder_process


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


def test_each_named_recorder_acts_only_on_the_sessions_it_recorded(pg_url: str) -> None:
    """Two recorders of two daemons share one database: a sessions_list from daemon A
    marks lost only A's sessions, the active sessions A asks after on reconnect are
    its own, and A's cleanup policies never match B's sessions."""
    from functools import partial

    import asyncpg

    from recorder.cleanup.actions import decide
    from recorder.db.cleanup import match_policy
    from recorder.db.connection import WriterDatabase
    from recorder.db.migrations import upgrade_sync
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier
    from recorder.protocol.policy import Conditions, Policy

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
        stop = Policy(
            "stale", "every 1h", "stop_session", Conditions(status=("running", "unknown"))
        )
        decider = partial(decide, stop, now_us=now + 10**7)
        decided = await db.run(match_policy, stop.name, stop.when, now + 10**7, decider, False, "a")
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
