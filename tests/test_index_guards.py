"""The session index the cleanup decides from, against frames that made it delete the
wrong thing or never give up: an error about one session ending another, an old end
time kept by a session that ran again, another recorder's daemon ending my session,
the recorder's own requests keeping a session busy, another daemon's list ending the
link's sessions, and ids handed out twice. Real parts: the writer's own code builds
the databases (SQLite, and PostgreSQL where the rule is spelled twice), the real
Cleanup runs on them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import websockets

from recorder.cleanup.jobs import Cleanup, Direct
from recorder.config import Config, load_config
from recorder.db.connection import WriterDatabase
from recorder.db.migrations import upgrade_sync
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from recorder.times import now_us
from tests.conftest import running
from tests.helpers import query, wait_for_frame, wait_until

SECOND = 1_000_000
DAY = 86_400 * SECOND

# (received on the recorder's clock, direction, frame)
Script = Sequence[tuple[int, str, bytes]]


def status(sid: str, state: str) -> bytes:
    return json.dumps(
        {"type": "session_status_update", "session": {"id": sid, "status": state}}
    ).encode()


def chunk(sid: str, text: str) -> bytes:
    return json.dumps({"type": "stream_chunk", "data": {"sessionId": sid, "chunk": text}}).encode()


def request(kind: str, sid: str, **payload: Any) -> bytes:
    return json.dumps({"type": kind, "payload": {"sessionId": sid, **payload}}).encode()


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


async def open_db(url: str, instance: str = "default") -> tuple[WriterDatabase, Store, int]:
    db = await WriterDatabase.open(url)
    await db.run(upgrade_sync)
    store = Store(db.dialect, instance)
    return db, store, await db.run(store.open_connection, "link", "ws://daemon", 1)


async def record(url: str, *batches: Script, instance: str = "default") -> None:
    """Each script one batch of the writer's own code, on one link connection."""
    db, store, cid = await open_db(url, instance)
    try:
        classifier = Classifier()
        seq = 0
        for script in batches:
            frames = []
            for at, direction, data in script:
                seq += 1
                frames.append((cid, seq, direction, at, seq, True, data))
            rows, index = classifier.rows_and_index(frames)
            await db.run(store.write_batch, rows, index)
    finally:
        await db.shutdown()


def config_for(tmp_path: Path, url: str, policies: str = "", storage: str = "") -> Config:
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\nurl = "{url}"\n{storage}\n{policies}')
    return load_config(path, env={})


def policy(name: str, action: str, when: str) -> str:
    return (
        f'[[cleanup.policies]]\nname = "{name}"\nschedule = "every 1h"\n'
        f'action = "{action}"\nwhen = {{ {when} }}\n'
    )


async def run_policy(config: Config, name: str) -> None:
    db, store, _ = await open_db(config.storage.url, config.storage.instance)
    try:
        cleanup = Cleanup(config, Direct(db, store), None)
        await cleanup.run(cleanup.policies[name])
    finally:
        await db.shutdown()


def with_policies(config: Config, text: str) -> Config:
    path = Path(config.source)
    path.write_text(path.read_text() + text)
    return load_config(path, env={})


def results(db: Path, run_id: int) -> list[str]:
    with sqlite3.connect(db) as conn:
        (text,) = conn.execute(f"select actions from cleanup_runs where id = {run_id}").fetchone()
    return [a["result"] for a in json.loads(text)]


def time_passes(db: Path, seconds: int) -> None:
    """Every time the database holds moves back: as if ``seconds`` went by."""
    us = seconds * SECOND
    with sqlite3.connect(db) as conn:
        columns = {row[1] for row in conn.execute("pragma table_info(sessions)")}
        times = [c for c in columns if c.endswith("_seen_us") or c in ("finished_us", "active_us")]
        conn.execute("update sessions set " + ", ".join(f"{t} = {t} - {us}" for t in times))
        conn.execute(
            f"update cleanup_matches set first_matched_us = first_matched_us - {us}, "
            f"retry_us = retry_us - {us}"
        )


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


# --- #12, #13: the recorder's own requests are not work -----------------------------


async def test_a_stop_with_idle_for_is_given_up_too(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    """The README's policy (status completed, idle_for 10m, every 5m) on a daemon that
    ignores stops. The stop, recorded with the session's id, made the session no
    longer idle: it stopped matching, its attempts were forgotten, and ten minutes
    later it matched as new: a stop every 10 minutes for ever, never given up."""
    stops: list[str] = []

    async def daemon(ws: Any) -> None:
        await ws.send('{"type":"health_check_response","healthy":true}')
        await ws.send(status("s1", "completed").decode())
        async for message in ws:
            if json.loads(message).get("type") == "stop_session":
                stops.append(message)  # and ignored

    async with websockets.serve(daemon, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        config = with_policies(
            make_config(f"ws://127.0.0.1:{port}", proxy={"enabled": False}),
            policy("stop", "stop_session", 'status = ["completed"], idle_for = "10m"'),
        )
        async with running(config) as svc:
            await wait_for_frame(svc, "type = 'session_status_update'")
            assert svc.cleanup is not None
            said: list[str] = []
            for _ in range(12):  # an hour of runs every 5 minutes
                time_passes(db_path, 300)
                said += results(db_path, await svc.cleanup.run(svc.cleanup.policies["stop"]))
                sent = sum(1 for r in said if r.startswith("requested"))

                async def recorded(sent: int = sent) -> bool:
                    found = await query(
                        svc, "select count(*) from frames where type = 'stop_session'"
                    )
                    return bool(found[0][0] == sent)

                await wait_until(svc, recorded)
    assert len(stops) == 4, said
    assert said[-1].startswith("given up"), said


async def test_a_reconnect_does_not_make_an_idle_session_busy_again(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    """A session silent for an hour is idle (idle_for = 10m). The link reconnects and
    its resync asks the daemon about every active session: that request was taken
    as the session being seen, and the policy found nothing idle. A link that
    reconnects more often than idle_for kept idle sessions from ever being stopped."""
    first = True
    drop = asyncio.Event()

    async def daemon(ws: Any) -> None:
        nonlocal first
        await ws.send('{"type":"health_check_response","healthy":true}')
        if first:
            first = False
            await ws.send(status("s1", "running").decode())
            await drop.wait()
            await ws.close(4001, "Token expired")
            return
        async for message in ws:
            if json.loads(message).get("type") == "session_status":
                await ws.send(status("s1", "running").decode())  # as it was

    async with websockets.serve(daemon, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        config = with_policies(
            make_config(f"ws://127.0.0.1:{port}", proxy={"enabled": False}),
            policy("idle", "stop_session", 'status = ["running"], idle_for = "10m"'),
        )
        async with running(config) as svc:
            try:
                shown = await wait_for_frame(svc, "type = 'session_status_update'")
                time_passes(db_path, 3600)
            finally:
                drop.set()
            assert svc.cleanup is not None
            # The second connection's poll, and the daemon's answer repeating "running".
            await wait_for_frame(
                svc,
                "type = 'session_status_update' and connection_id > :first",
                first=shown.connection_id,
            )
            said = results(db_path, await svc.cleanup.run(svc.cleanup.policies["idle"]))
    assert said == ["requested"]


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
