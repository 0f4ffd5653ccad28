"""The session index the cleanup decides from, against frames that made it delete the
wrong thing: an error about one session ending another, an old end time kept by a
session that ran again, another recorder's daemon ending my session, another daemon's
list ending the link's sessions, and ids handed out twice. Real parts: the writer's
own code builds the databases (SQLite, and PostgreSQL where the rule is spelled
twice), the real Cleanup runs on them. tests/test_idle_stops.py holds the recorder's
own requests, which are not work."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from recorder.cleanup.jobs import Cleanup, Direct
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from recorder.times import now_us
from tests.cleanup_scripts import (
    DAY,
    SECOND,
    chunk,
    config_for,
    open_db,
    policy,
    record,
    request,
    run_policy,
    status,
)


@dataclass
class Database:
    """One database under test: the writer's URL, the configuration's, and a reader."""

    url: str
    config_url: str
    kind: str

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return list(conn.execute(sql))
        import asyncpg

        conn = await asyncpg.connect(self.config_url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()


def sqlite_database(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    return Database(url, url, "sqlite")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return sqlite_database(tmp_path)
    pg_url: str = request.getfixturevalue("pg_url")
    return Database(pg_url.replace("postgresql://", "postgresql+asyncpg://"), pg_url, "postgresql")


# --- #4: "Session not found" names its session -------------------------------------


async def test_session_not_found_for_one_session_never_ends_another(tmp_path: Path) -> None:
    """Ask about A, give B a task; the daemon answers in order, "Session not found: A"
    first. The error went to the latest request's session, B, which became "unknown"
    (finished): a purge of lost sessions deleted B while it ran."""
    db = sqlite_database(tmp_path)
    t = now_us() - 60 * SECOND
    not_found = json.dumps({"type": "error", "error": "Session not found: A"}).encode()
    await record(
        db.url,
        [(t, IN, status("A", "running")), (t + 1, IN, status("B", "running"))],
        [
            (t + 10, OUT, request("session_status", "A")),
            (t + 11, OUT, request("execute_task", "B", task="more")),
            (t + 12, IN, not_found),
            (t + 13, IN, b'{"type":"task_executing","sessionId":"B","taskId":"more"}'),
            (t + 14, IN, chunk("B", "working")),
        ],
    )
    said = await db.rows("select id, status, last_error from sessions order by id")
    assert said == [("A", "unknown", "Session not found: A"), ("B", "running", None)]
    assert await db.rows("select session_id from frames where type = 'error'") == [("A",)]
    await run_policy(
        config_for(tmp_path, db.url, policy("lost", "purge", 'status = ["unknown"]')), "lost"
    )
    assert await db.rows("select count(*) from frames where session_id = 'B'") == [(4,)]
    assert await db.rows("select id from sessions") == [("B",)]


# --- #5: a session that runs again ends again ---------------------------------------


async def ran_again(db: Database, tmp_path: Path, split: bool) -> None:
    """Ended 40 days ago; runs again and completes seconds ago; retention is 30 days."""
    now = now_us()
    again = [(now - 10 * SECOND, IN, status("s", "running"))]
    done = [(now - 5 * SECOND, IN, status("s", "completed"))]
    batches = [again, done] if split else [again + done]
    await record(db.url, [(now - 40 * DAY, IN, status("s", "completed"))], *batches)
    assert await db.rows("select finished_us from sessions") == [(now - 5 * SECOND,)]
    await run_policy(
        config_for(tmp_path, db.config_url, storage='retention = "30d"'), "storage.retention"
    )
    assert await db.rows("select count(*) from frames") == [(3,)]


@pytest.mark.parametrize("split", [False, True], ids=["one-batch", "two-batches"])
async def test_a_session_that_ran_again_ended_when_it_ended_again(
    tmp_path: Path, split: bool
) -> None:
    """With "running" and "completed" in one batch, the stored end of 40 days ago was
    kept, and retention purged what had just been recorded; over two batches not."""
    await ran_again(sqlite_database(tmp_path), tmp_path, split)


async def test_a_session_that_ran_again_ended_when_it_ended_again_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    """The same through recorder.db.pg_index's SQL spelling of the rule."""
    url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
    await ran_again(Database(url, pg_url, "postgresql"), tmp_path, split=False)


# --- #3: news only from the recorder that holds the session -------------------------


async def test_another_recorders_daemon_cannot_finish_my_session(
    database: Database, tmp_path: Path
) -> None:
    """Recorders "a" and "b" share a database; b's daemon sends frames naming the id of
    a session a records. b's "completed" ended a's running session (one row per id),
    and a's purge deleted a session its own daemon says is running, b's frames too."""
    t = now_us() - 60 * SECOND
    await record(database.url, [(t, IN, status("shared", "running"))], instance="a")
    await record(
        database.url,
        [
            (
                t + 1,
                IN,
                json.dumps({"type": "error", "error": "Session not found: shared"}).encode(),
            ),
            (t + 2, IN, status("shared", "completed")),
            (t + 3, IN, chunk("shared", "b's")),
        ],
        instance="b",
    )
    row = await database.rows(
        "select instance, status, finished_us, last_error, frame_count, last_seen_us from sessions"
    )
    # b's frames count and are seen; what b's daemon says changes nothing, nor is
    # b's daemon at work in a's session.
    assert row == [("a", "running", None, None, 4, t + 3)]
    assert await database.rows("select active_us from sessions") == [(t,)]
    bye = policy("bye", "purge", 'status = ["completed", "unknown"]')
    await run_policy(config_for(tmp_path, database.config_url, bye, 'instance = "a"'), "bye")
    assert await database.rows("select count(*) from frames") == [(4,)]


# --- #19: only the link's lists end sessions ---------------------------------------


async def test_another_upstreams_sessions_list_never_ends_the_links_sessions(
    tmp_path: Path,
) -> None:
    """proxy.upstream may name another daemon than daemon.url. A UI lists that daemon's
    sessions through the proxy: its sessions_list, which cannot name the link
    daemon's sessions, marked each of them lost ("unknown", finished: purgeable while
    it runs, never stopped). The link's own list still does, after a restart too."""
    db = sqlite_database(tmp_path)
    t = now_us() - 60 * SECOND
    await record(db.url, [(t, IN, status("a1", "running")), (t + 1, IN, status("a2", "running"))])
    empty = b'{"type":"sessions_list","sessions":[]}'
    handle, store, link = await open_db(db.url)
    try:
        proxied = await handle.run(store.open_connection, "proxy", "ws://other-daemon", t)
        frames = [
            (proxied, 1, OUT, t + 10, 1, True, b'{"type":"list_sessions"}'),
            (proxied, 2, IN, t + 11, 2, True, empty),
        ]
        await handle.run(store.write_batch, *Classifier().rows_and_index(frames))
        assert await db.rows("select status from sessions") == [("running",), ("running",)]
        # The link's list, a session named: the other one is lost.
        listed = b'{"type":"sessions_list","sessions":[{"id":"a1","status":"running"}]}'
        frames = [(link, 1, IN, t + 20, 3, True, listed)]
        await handle.run(store.write_batch, *Classifier().rows_and_index(frames))
    finally:
        await handle.shutdown()
    statuses = await db.rows("select id, status from sessions order by id")
    assert statuses == [("a1", "running"), ("a2", "unknown")]
    # A restarted writer (a new Store) reads the connections' roles from their rows.
    handle, store, _ = await open_db(db.url)
    try:
        frames = [(proxied, 3, IN, t + 30, 4, True, empty)]
        await handle.run(store.write_batch, *Classifier().rows_and_index(frames))
    finally:
        await handle.shutdown()
    assert await db.rows("select status from sessions where id = 'a1'") == [("running",)]


# --- #18: ids a reader has seen are never handed out again --------------------------


@pytest.mark.parametrize("restart", [False, True], ids=["same-writer", "after-a-restart"])
async def test_frames_recorded_after_a_purge_get_ids_never_seen_before(
    tmp_path: Path, restart: bool
) -> None:
    """SQLite reuses the largest rowid once its row is deleted (frames.id has no
    AUTOINCREMENT). Purge the newest session and the next frames took its ids again:
    `recorder tail`, which follows `id > newest seen`, never printed them, and a
    replay following a session by id skipped them. Connections likewise: the purge
    deletes the closed connections it empties."""
    db = sqlite_database(tmp_path)
    t = now_us() - DAY
    handle, store, link = await open_db(db.url)
    classifier = Classifier()
    try:
        proxied = await handle.run(store.open_connection, "proxy", "ws://daemon", t)
        frames = [(link, 1, IN, t, 1, True, status("kept", "running"))]
        frames += [(proxied, i, IN, t + i, i, True, chunk("done", f"{i}")) for i in range(1, 50)]
        frames += [(proxied, 50, IN, t + 50, 50, True, status("done", "completed"))]
        await handle.run(store.write_batch, *classifier.rows_and_index(frames))
        close = partial(
            store.close_connection, code=1000, reason="", closed_by="client", error=None
        )
        await handle.run(close, proxied, t + 60)
        (seen,) = (await db.rows("select max(id) from frames"))[0]  # what `tail` printed
        config = config_for(tmp_path, db.url, policy("bye", "purge", 'status = ["completed"]'))
        await Cleanup(config, Direct(handle, store), None).run(config.cleanup.policies[0])
        assert await db.rows("select id from connections") == [(link,)]
        if restart:
            await handle.shutdown()
            handle, store, link = await open_db(db.url)
        again = await handle.run(store.open_connection, "proxy", "ws://daemon", now_us())
        frames = [(again, 1, IN, now_us(), 1, True, chunk("kept", "new words"))]
        await handle.run(store.write_batch, *classifier.rows_and_index(frames))
    finally:
        await handle.shutdown()
    (new,) = (await db.rows("select id from frames where payload like '%new words%'"))[0]
    assert new > seen
    assert again > proxied
