"""Faults on PostgreSQL: values it refuses, and a server connection that drops."""

from __future__ import annotations

import asyncio
import json

import pytest

from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, Frame
from recorder.times import now_us
from tests.conftest import pg_admin
from tests.faults.refused_values import check_refused_values_leave_the_index_out
from tests.helpers import cli_json_lines, frame_bytes


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
