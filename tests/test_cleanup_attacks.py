"""Regression tests from an attack on the cleanup: each was a way a daemon, a second
recorder, a reload or a long stream made it delete, stall or grow. Real parts only:
the writer's own code builds the databases, the real Cleanup runs on them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
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
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.conftest import running
from tests.helpers import query, wait_for_frame

SECOND = 1_000_000
DAY = 86_400 * SECOND

Script = Sequence[tuple[int, str, bytes]]


def status(sid: str, state: str) -> bytes:
    return json.dumps(
        {"type": "session_status_update", "session": {"id": sid, "status": state}}
    ).encode()


def chunk(sid: str, text: str) -> bytes:
    return json.dumps({"type": "stream_chunk", "data": {"sessionId": sid, "chunk": text}}).encode()


async def open_db(url: str, instance: str = "default") -> tuple[WriterDatabase, Store, int]:
    db = await WriterDatabase.open(url)
    await db.run(upgrade_sync)
    store = Store(db.dialect, instance)
    return db, store, await db.run(store.open_connection, "link", "ws://daemon", 1)


async def record(url: str, *batches: Script, instance: str = "default") -> None:
    """Each script one batch of the writer's own code, on one connection, frames
    received at the given times (the recorder's clock)."""
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


def policy(name: str, action: str, when: str, **extra: Any) -> str:
    lines = [f'name = "{name}"', 'schedule = "every 1h"', f'action = "{action}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "[[cleanup.policies]]\n" + "\n".join(lines) + f"\nwhen = {{ {when} }}\n"


async def run_policy(config: Config, name: str, link: Any = None) -> dict[str, Any]:
    db, store, _ = await open_db(config.storage.url, config.storage.instance)
    try:
        cleanup = Cleanup(config, Direct(db, store), link)
        run_id = await cleanup.run(cleanup.policies[name])
    finally:
        await db.shutdown()
    return {"id": run_id}


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def actions(db: Path, run_id: int) -> list[dict[str, Any]]:
    (text,) = rows(db, f"select actions from cleanup_runs where id = {run_id}")[0]
    result: list[dict[str, Any]] = json.loads(text)
    return result


# --- compaction -----------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        # The classifier takes the session from the top level, or from payload: the
        # compaction reads text only from data.chunk.
        {"type": "stream_chunk", "sessionId": "s", "chunk": "TOP-LEVEL"},
        {"type": "stream_chunk", "payload": {"sessionId": "s", "chunk": "IN-PAYLOAD"}},
        {"type": "stream_chunk", "data": {"sessionId": "s", "chunk": {"text": "AN-OBJECT"}}},
        {"type": "stream_chunk", "data": {"sessionId": "s", "chunk": 12345}},
        {"type": "stream_chunk", "data": {"sessionId": "s", "content": "OTHER-KEY"}},
    ],
    ids=["top-level", "payload", "object", "number", "other-key"],
)
async def test_compaction_never_deletes_a_chunk_whose_text_it_cannot_read(
    tmp_path: Path, frame: dict[str, Any]
) -> None:
    """A stream_chunk frame the compaction cannot read text from is deleted and adds
    "" to the compacted text: what it said is gone. It should stay as it is."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    base = now_us() - DAY
    odd = json.dumps(frame)
    await record(
        url,
        [
            (base, IN, status("s", "running")),
            (base + 1, IN, chunk("s", "before ")),
            (base + 2, IN, odd.encode()),
            (base + 3, IN, chunk("s", " after")),
            (base + 4, IN, status("s", "completed")),
        ],
    )
    config = config_for(tmp_path, url, policy("fold", "compact", 'status = ["completed"]'))
    await run_policy(config, "fold")
    payloads = [p for (p,) in rows(db, "select payload from frames order by id")]
    marker = next(v for v in _strings(frame) if v.isupper() or v.isdigit())
    assert any(marker in p for p in payloads), (marker, payloads)


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return [str(value)] if not isinstance(value, list) else []


# --- PostgreSQL: recorders sharing a database ------------------------------------


def _asyncpg(pg_url: str) -> str:
    return pg_url.replace("postgresql://", "postgresql+asyncpg://")


async def _old_month(pg_url: str, at: int) -> None:
    import asyncpg

    from recorder.db.partitions import months

    (name, low, high) = months(at, 1)[0]
    db, _, _ = await open_db(_asyncpg(pg_url))
    await db.shutdown()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF frames '
            f"FOR VALUES FROM ({low}) TO ({high})"
        )
    finally:
        await conn.close()


async def _pg_rows(pg_url: str, sql: str) -> list[tuple[Any, ...]]:
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_a_recorders_retention_never_drops_another_recorders_frames(
    pg_url: str, tmp_path: Path
) -> None:
    """Recorder "a" (retention 30d) and recorder "b" (no retention: keep everything)
    share a database. "a" dropped the whole month, with b's session in it: a recorder
    purges only its own (recorder.db.cleanup.match_policy says so), and row by row
    it would not have touched b's session."""
    old = now_us() - 90 * DAY
    await _old_month(pg_url, old)
    url = _asyncpg(pg_url)
    await record(url, [(old, IN, status("theirs", "completed"))], instance="b")
    await record(url, [(old + SECOND, IN, status("mine", "completed"))], instance="a")
    config = config_for(tmp_path, pg_url, storage='retention = "30d"\ninstance = "a"')
    await run_policy(config, "storage.retention")
    left = await _pg_rows(pg_url, "SELECT session_id FROM frames ORDER BY id")
    assert left == [("theirs",)]
    assert await _pg_rows(pg_url, "SELECT id FROM sessions") == [("theirs",)]


async def test_partition_retention_never_drops_a_session_that_has_not_finished(
    pg_url: str, tmp_path: Path
) -> None:
    """A session seen only from its stream (no status: not finished, not active)
    began three months ago and streams today. Row by row, retention purges only
    finished sessions; the partition drop took its first months."""
    old = now_us() - 90 * DAY
    await _old_month(pg_url, old)
    url = _asyncpg(pg_url)
    await record(
        url,
        [(old, IN, chunk("streaming", "first words "))],
        [(now_us() - SECOND, IN, chunk("streaming", "latest words"))],
    )
    config = config_for(tmp_path, pg_url, storage='retention = "30d"')
    await run_policy(config, "storage.retention")
    left = await _pg_rows(pg_url, "SELECT count(*) FROM frames WHERE session_id = 'streaming'")
    assert left == [(2,)]


# --- which session a daemon's frames are about -----------------------------------


def task_chunk(sid: str, task: str, text: str) -> bytes:
    data = {"sessionId": sid, "taskId": task, "chunk": text}
    return json.dumps({"type": "stream_chunk", "data": data}).encode()


def with_policies(config: Config, text: str) -> Config:
    path = Path(config.source)
    path.write_text(path.read_text() + text)
    return load_config(path, env={})


def request(kind: str, sid: str, **payload: Any) -> bytes:
    return json.dumps({"type": kind, "payload": {"sessionId": sid, **payload}}).encode()


async def test_compaction_keeps_each_tasks_text_under_its_task(tmp_path: Path) -> None:
    """Two tasks' chunks in one session: compaction folded them into one frame that
    carries the first chunk's task_id, so `recorder frames --task second` finds none
    of the second task's text afterwards (and tasks.frame_count still counts the
    deleted chunks)."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    await record(
        url,
        [
            (t, IN, status("s", "running")),
            (t + 1, IN, task_chunk("s", "first", "one ")),
            (t + 2, IN, task_chunk("s", "first", "two ")),
            (t + 3, IN, task_chunk("s", "second", "THREE ")),
            (t + 4, IN, task_chunk("s", "second", "FOUR")),
            (t + 5, IN, status("s", "completed")),
        ],
    )
    config = config_for(tmp_path, url, policy("fold", "compact", 'status = ["completed"]'))
    await run_policy(config, "fold")
    second = "".join(p for (p,) in rows(db, "select payload from frames where task_id = 'second'"))
    assert "THREE" in second and "FOUR" in second
    counted = dict(rows(db, "select task_id, frame_count from tasks"))
    held = dict(
        rows(db, "select task_id, count(*) from frames where task_id is not null group by 1")
    )
    assert counted == held


async def test_a_lone_surrogate_in_one_chunk_does_not_stop_compaction(tmp_path: Path) -> None:
    """A chunk spelling a lone surrogate (\\ud800, valid JSON, recorded as text) made
    every step holding it fail (UnicodeEncodeError when the compacted payload is
    encoded): the session is never compacted, and each run says "failed"."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    bad = b'{"type":"stream_chunk","data":{"sessionId":"s","chunk":"x\\ud800y"}}'
    await record(
        url,
        [
            (t, IN, status("s", "running")),
            (t + 1, IN, chunk("s", "one ")),
            (t + 2, IN, bad),
            (t + 3, IN, chunk("s", "three")),
            (t + 4, IN, status("s", "completed")),
        ],
    )
    config = config_for(tmp_path, url, policy("fold", "compact", 'status = ["completed"]'))
    run = await run_policy(config, "fold")
    assert next(a["result"] for a in actions(db, run["id"])).startswith("compacted")


# --- two runs at once -----------------------------------------------------------


class Pausing(Direct):
    """Operations run directly; the chosen kind pauses after ``steps`` of it until
    :attr:`go` is set, as a run waits between two of its steps."""

    def __init__(self, db: Any, store: Any, kind: type[Any], steps: int) -> None:
        super().__init__(db, store)
        self.kind, self.left = kind, steps
        self.paused, self.go = asyncio.Event(), asyncio.Event()

    async def perform(self, operation: Any) -> Any:
        if isinstance(operation, self.kind):
            if self.left == 0:
                self.paused.set()
                await self.go.wait()
            self.left -= 1
        return await super().perform(operation)


async def test_two_compactions_at_once_keep_the_text_in_order(tmp_path: Path) -> None:
    """Two runs compacting one session step by step (two `cleanup run` with no service,
    or two policies): each appended to its own frame and the text came out scrambled.
    The database says which run holds a session; the other leaves it alone. (Two
    `cleanup run` processes cannot both run: each holds the recorder's lock.)"""
    from recorder.pipeline.cleanup_ops import CompactSome

    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    pieces = [f"<{i:05d}>" for i in range(8000)]
    script = [(t, IN, status("s", "running"))]
    script += [(t + i, IN, chunk("s", p)) for i, p in enumerate(pieces, 1)]
    script += [(t + 9000, IN, status("s", "completed"))]
    await record(url, script)
    both = policy("fold", "compact", 'status = ["completed"]')
    config = config_for(tmp_path, url, both + policy("squash", "compact", 'status = ["completed"]'))
    handle, store, _ = await open_db(url)
    try:
        pausing = Pausing(handle, store, CompactSome, steps=1)
        cleanup = Cleanup(config, pausing, None)
        first = asyncio.create_task(cleanup.run(cleanup.policies["fold"]))
        await asyncio.wait_for(pausing.paused.wait(), 10)
        pausing.left = 10**9  # the second run goes on without pausing
        second = await asyncio.wait_for(cleanup.run(cleanup.policies["squash"]), 10)
        pausing.go.set()
        await asyncio.wait_for(first, 30)
    finally:
        await handle.shutdown()
    (said,) = actions(db, second)
    assert said["result"] == f"skipped: run {first.result()} is working on it"
    texts = [
        json.loads(p)["data"]["text"]
        for (p,) in rows(
            db, "select payload from frames where type = 'stream_compacted' order by id"
        )
    ]
    assert "".join(texts) == "".join(pieces)


# --- what a purge leaves ----------------------------------------------------------


class LateFrame(Direct):
    """Operations run directly; before the purge's last step, the writer stores one
    more frame of the session (a batch between two cleanup operations)."""

    def __init__(self, db: Any, store: Any, cid: int, frame: bytes) -> None:
        super().__init__(db, store)
        self.cid, self.frame = cid, frame

    async def perform(self, operation: Any) -> Any:
        from recorder.pipeline.cleanup_ops import PurgeFinish

        if isinstance(operation, PurgeFinish):
            late = [(self.cid, 10_000, IN, now_us(), 0, True, self.frame)]
            rows_, index = Classifier().rows_and_index(late)
            await self.db.run(self.store.write_batch, rows_, index)
        return await super().perform(operation)


async def test_a_frame_written_during_a_purge_is_not_left_without_its_session(
    tmp_path: Path,
) -> None:
    """A frame of the session committed between the purge's last delete and its
    finish (the daemon re-broadcasts the final status, as real daemons do on stop)
    stays, while the session's row goes: a frame no policy can ever match again
    (there is no session to match), `recorder show` cannot find it."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    await record(url, [(now_us() - DAY, IN, status("s", "completed"))])
    config = config_for(tmp_path, url, policy("bye", "purge", 'status = ["completed"]'))
    handle, store, cid = await open_db(url)
    try:
        cleanup = Cleanup(config, LateFrame(handle, store, cid, chunk("s", "late")), None)
        await cleanup.run(cleanup.policies["bye"])
    finally:
        await handle.shutdown()
    orphans = rows(
        db, "select count(*) from frames where session_id not in (select id from sessions)"
    )
    assert orphans == [(0,)]


async def test_sessions_a_policy_gave_up_on_do_not_grow_every_runs_record(
    tmp_path: Path,
) -> None:
    """20 000 sessions a stop policy gave up on (a daemon that ignores stops): every
    run, every 5 minutes, writes all 20 000 "given up" entries again into its audit
    row (1.86 MB a run, 535 MB a day; cleanup_runs is never trimmed, and
    storage.max_db_size purges recordings to make room for it). Measured beside it:
    100 000 sessions, a dry run's row is 7.2 MB and its match holds the writer
    1.5-2.8 s (shared machine)."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    n = 20_000
    await record(url, [(t + i, IN, status(f"session_{i:08d}", "completed")) for i in range(n)])
    config = config_for(tmp_path, url, policy("stop", "stop_session", 'status = ["completed"]'))
    await run_policy(config, "stop")  # the link is down: matched and remembered
    with sqlite3.connect(db) as conn:  # four stops went unanswered for each
        conn.execute("update cleanup_matches set attempts = 4, retry_us = 0")
    run = await run_policy(config, "stop")
    (size,) = rows(db, f"select length(actions) from cleanup_runs where id = {run['id']}")[0]
    assert size < 100_000, size


@pytest.mark.parametrize("action", ["compact", "purge"])
async def test_a_run_ends_while_a_finished_session_goes_on_streaming(
    make_config: Callable[..., Config], db_path: Path, action: str
) -> None:
    """A daemon says a session completed, then goes on streaming chunks for it (a
    hostile daemon; or a session wrongly marked lost, see the Session-not-found
    test). The compaction (or purge) takes each step's new chunks and is done only
    when a step finds none: with a chunk in every batch, the run never ends (the
    policy's lock held, its audit row "running", the session busy for every other
    policy), and each compaction step rewrites the whole open compacted frame (up to
    a MiB) to append a few bytes."""
    streaming = asyncio.Event()
    stop = asyncio.Event()

    async def daemon(ws: Any) -> None:
        await ws.send('{"type":"health_check_response","healthy":true}')
        await ws.send(status("s", "running").decode())
        for i in range(3):
            await ws.send(chunk("s", f"early {i} ").decode())
        await ws.send(status("s", "completed").decode())
        while not stop.is_set():
            for _ in range(100):  # as fast as the recorder takes them
                await ws.send(chunk("s", "more ").decode())
            streaming.set()
            await asyncio.sleep(0)

    async with websockets.serve(daemon, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        config = with_policies(
            make_config(f"ws://127.0.0.1:{port}", proxy={"enabled": False}),
            policy("it", action, 'status = ["completed"]'),
        )
        async with running(config) as svc:
            await wait_for_frame(
                svc, "type = 'session_status_update' and payload like '%completed%'"
            )
            await streaming.wait()
            assert svc.cleanup is not None
            task = asyncio.create_task(svc.cleanup.run(svc.cleanup.policies["it"]))
            done, _ = await asyncio.wait([task], timeout=5)
            stop.set()
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            found = await query(svc, "select state, frames from cleanup_runs")
            assert done, f"still running after 5 s: {found}"


async def test_a_recorders_size_limit_never_purges_another_recorders_sessions(
    pg_url: str, tmp_path: Path
) -> None:
    """storage.max_db_size of recorder "a" purged the oldest finished sessions of the
    whole database (recorder.db.cleanup.oldest_finished has no instance condition):
    recorder b's session went, its own retention or policies notwithstanding."""
    url = _asyncpg(pg_url)
    t = now_us() - DAY
    await record(url, [(t, IN, status("theirs", "completed"))], instance="b")
    await record(url, [(t + SECOND, IN, status("mine", "completed"))], instance="a")
    config = config_for(tmp_path, pg_url, storage='max_db_size = "1MB"\ninstance = "a"')
    db, store, _ = await open_db(url, "a")
    try:
        await Cleanup(config, Direct(db, store), None).keep_under_size()
    finally:
        await db.shutdown()
    assert ("theirs",) in await _pg_rows(pg_url, "SELECT id FROM sessions")


async def test_max_db_size_on_postgresql_purges_only_the_excess_once(
    pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL's database size does not shrink when rows are deleted. The first
    run purges the excess; every later run (every 10 minutes) still sees the same
    size and purges another excess worth of the oldest sessions, with nothing new
    recorded, until no finished session is left."""
    url = _asyncpg(pg_url)
    t = now_us() - DAY
    script = []
    for n in range(10):
        script.append((t + n * 1000, IN, status(f"s{n}", "running")))
        script += [(t + n * 1000 + i, IN, chunk(f"s{n}", "z" * 2000)) for i in range(1, 101)]
        script.append((t + n * 1000 + 999, IN, status(f"s{n}", "completed")))
    await record(url, script)
    await _pg_rows(pg_url, "CHECKPOINT")
    ((size,),) = await _pg_rows(pg_url, "SELECT pg_database_size(current_database())")
    limit = size - 300_000  # about one and a half sessions' payloads over
    config = config_for(tmp_path, pg_url, storage=f'max_db_size = "{limit}B"')
    db, store, _ = await open_db(url)
    try:
        cleanup = Cleanup(config, Direct(db, store), None)
        await cleanup.keep_under_size()
        after_first = await _pg_rows(pg_url, "SELECT count(*) FROM sessions")
        await cleanup.keep_under_size()
        await cleanup.keep_under_size()
    finally:
        await db.shutdown()
    assert await _pg_rows(pg_url, "SELECT count(*) FROM sessions") == after_first


def test_a_policy_may_not_take_a_built_in_policys_name(tmp_path: Path) -> None:
    """A policy named "storage.retention" was taken for the retention by its name: on
    PostgreSQL it dropped whole months whatever its own conditions said, and with
    storage.retention set it was silently replaced (dry_run = true included)."""
    from recorder.config import ConfigError

    failed_only = policy("storage.retention", "purge", 'status = ["failed"]')
    with pytest.raises(ConfigError, match=r"'storage\.retention' is reserved"):
        config_for(tmp_path, "sqlite:///x.db", failed_only)


async def test_a_reload_does_not_cut_short_a_run_someone_asked_for(tmp_path: Path) -> None:
    """`recorder cleanup run` asks the service; a SIGHUP arrived while that run purged:
    the reload stopped the old cleanup, which cancelled the run half-way, and the CLI
    was told "the recorder stopped first", though it had not. Every SIGHUP (a config
    manager, logrotate) cut short every run in progress. A reload now changes the
    schedule and lets runs finish."""
    from recorder.db.cleanup_records import ask
    from recorder.pipeline.cleanup_ops import PurgeSome

    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    script = [(t, IN, status("s", "running"))]
    script += [(t + i, IN, chunk("s", "x")) for i in range(1, 5000)]
    await record(url, [*script, (t + 5000, IN, status("s", "completed"))])
    config = config_for(tmp_path, url, policy("bye", "purge", 'status = ["completed"]'))
    handle, store, _ = await open_db(url)
    try:
        request = await handle.run(ask, "bye", False, now_us(), "default")
        pausing = Pausing(handle, store, PurgeSome, steps=1)
        cleanup = Cleanup(config, pausing, None)
        await cleanup.take_requests()
        await asyncio.wait_for(pausing.paused.wait(), 10)
        cleanup.apply(config)  # what the reload does
        pausing.left = 10**9
        pausing.go.set()
        await asyncio.wait_for(asyncio.gather(*cleanup._requested), 10)
    finally:
        await handle.shutdown()
    said = json.loads(rows(db, f"select result from cleanup_requests where id = {request}")[0][0])
    assert list(said) == ["runs"]
    assert rows(db, "select count(*) from frames where session_id = 's'") == [(0,)]


async def test_history_does_not_call_a_run_in_progress_interrupted(tmp_path: Path) -> None:
    """`recorder cleanup run` with no service ran the purge itself holding no lock, and
    `cleanup history` meanwhile, seeing no recorder, called that run interrupted. A
    direct run holds the recorder's lock as the service would (here, as the CLI does)."""
    from click.testing import CliRunner

    from recorder.cli import cli
    from recorder.db.locks import FileLock
    from recorder.pipeline.cleanup_ops import PurgeSome

    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    script = [(t, IN, status("s", "running"))]
    script += [(t + i, IN, chunk("s", "x")) for i in range(1, 5000)]
    await record(url, [*script, (t + 5000, IN, status("s", "completed"))])
    config = config_for(tmp_path, url, policy("bye", "purge", 'status = ["completed"]'))
    handle, store, _ = await open_db(url)
    lock = FileLock(db, str(db))
    await lock.acquire()
    pausing = Pausing(handle, store, PurgeSome, steps=1)
    going = asyncio.create_task(Cleanup(config, pausing, None).run(config.cleanup.policies[0]))
    try:
        await asyncio.wait_for(pausing.paused.wait(), 10)
        shown = CliRunner().invoke(cli, ["cleanup", "history", "--database", str(db), "--json"])
    finally:
        going.cancel()
        await asyncio.gather(going, return_exceptions=True)
        await handle.shutdown()
        await lock.give_back()
    assert [r["state"] for r in json.loads(shown.stdout)] == ["running"]
