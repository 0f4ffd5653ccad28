"""The same schema, migrations and writer on PostgreSQL (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from recorder.cli import cli
from recorder.config import Config
from recorder.db.migrations import head_revision
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, OUT, Frame
from recorder.service import Service
from tests.conftest import running
from tests.helpers import cli_json_lines, frame_bytes

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN.replace("postgresql://", "postgres://"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"recorder_test_{os.getpid()}"
    try:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}"'))
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError) as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
