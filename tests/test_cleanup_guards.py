"""What the cleanup must never let the outside decide (issue 17): a daemon's clock,
a daemon that refuses or ignores its stops, a stuck policy, a run killed part-way, a
session too large to compact at once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import websockets
from click.testing import CliRunner

from recorder.cleanup.actions import PURGE_CHUNK, Compact, StopSession
from recorder.cleanup.actor import Run
from recorder.cleanup.jobs import Cleanup, Direct
from recorder.cli import cli
from recorder.config import Config, load_config
from recorder.pipeline.classifier import Classifier
from recorder.pipeline.cleanup_ops import PurgeSome
from recorder.pipeline.ops import Operation
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.conftest import running
from tests.helpers import wait_for_frame, writer_database

T = TypeVar("T")
SECOND = 1_000_000
DAY = 86_400 * SECOND
DAEMON_LONG_AGO = "2025-10-31T12:00:00.000Z"  # about 400 days before these tests run
DAEMON_FUTURE = "2126-01-01T00:00:00.000Z"


def status(sid: str, state: str, **times: str) -> bytes:
    session = {"id": sid, "status": state, **times}
    return json.dumps({"type": "session_status_update", "session": session}).encode()


def chunk(sid: str, text: str) -> bytes:
    return json.dumps({"type": "stream_chunk", "data": {"sessionId": sid, "chunk": text}}).encode()


async def record(url: str, script: Sequence[tuple[int, str, bytes]]) -> None:
    """Frames received at the given times (the recorder's clock), on one connection,
    written by the writer's own code."""
    db, store, cid = await writer_database(url)
    try:
        frames = [
            (cid, seq, direction, at, seq, True, data)
            for seq, (at, direction, data) in enumerate(script, 1)
        ]
        classifier = Classifier()
        for start in range(0, len(frames), 5000):
            rows, index = classifier.rows_and_index(frames[start : start + 5000])
            await db.run(store.write_batch, rows, index)
    finally:
        await db.shutdown()


def config_file(tmp_path: Path, db: Path, policies: str = "", storage: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\nurl = "sqlite:///{db}"\n{storage}\n{policies}')
    return path


def policy(name: str, action: str, when: str, **extra: Any) -> str:
    lines = [f'name = "{name}"', 'schedule = "every 1h"', f'action = "{action}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "[[cleanup.policies]]\n" + "\n".join(lines) + f"\nwhen = {{ {when} }}\n"


def cli_json(*args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def test_a_daemon_clock_never_decides_what_cleanup_deletes(tmp_path: Path) -> None:
    """A session recorded seconds ago whose daemon says it ended 400 days back was
    purged by ended_before = 30d; one that ended 31 days ago on the recorder's clock,
    with a daemon endedAt in 2126, never matched. The recorder's times decide."""
    db = tmp_path / "recorder.db"
    now = now_us()
    long_ago = {"startedAt": DAEMON_LONG_AGO, "endedAt": DAEMON_LONG_AGO}
    script = [
        (now - 31 * DAY, IN, status("old", "running", startedAt=DAEMON_FUTURE)),
        (now - 31 * DAY + SECOND, IN, status("old", "completed", endedAt=DAEMON_FUTURE)),
        (now - 20 * SECOND, IN, status("recent", "running", startedAt=DAEMON_LONG_AGO)),
        (now - 10 * SECOND, IN, status("recent", "completed", **long_ago)),
    ]
    asyncio.run(record(f"sqlite:///{db}", script))
    ages = policy("older", "purge", 'started_before = "30d"', dry_run=True)
    ended = policy("ended", "purge", 'ended_before = "30d"')
    config = str(config_file(tmp_path, db, ages + ended))

    (dry,) = cli_json("cleanup", "run", "--config", config, "--policy", "older")
    assert dry["actions"] == [{"session": "old", "result": "would purge"}]
    (run,) = cli_json("cleanup", "run", "--config", config, "--policy", "ended")
    assert run["actions"] == [
        {
            "session": "old",
            "result": "purged 2 frames",
            "done": True,
            "bytes": run["actions"][0]["bytes"],
        }
    ]
    assert rows(db, "select id from sessions") == [("recent",)]
    # The daemon's times are still shown as the daemon said them.
    shown = cli_json("sessions", "--database", str(db))
    assert shown["started_at"].startswith("2025-10-31T12:00:00")
    # ...and where they stand far from the recorder's, `show` says so.
    daemon = 1_761_912_000_000_000  # DAEMON_LONG_AGO
    days, ended_days = (now - 20 * SECOND - daemon) / DAY, (now - 10 * SECOND - daemon) / DAY
    notes = cli_json("show", "--database", str(db), "recent")["clock_notes"]
    assert notes == [
        f"the daemon's startedAt is {days:,.1f} days before the recorder first saw it",
        f"the daemon's endedAt is {ended_days:,.1f} days before the recorder saw it end",
    ]
    text = CliRunner().invoke(cli, ["show", "--database", str(db), "recent"]).stdout
    assert f"clock     the daemon's startedAt is {days:,.1f} days before" in text


def test_retention_goes_by_the_recorder_clock_too(tmp_path: Path) -> None:
    db = tmp_path / "recorder.db"
    now = now_us()
    script = [
        (now - 40 * DAY, IN, status("due", "completed", endedAt=DAEMON_FUTURE)),
        (now - 5 * SECOND, IN, status("fresh", "completed", endedAt=DAEMON_LONG_AGO)),
    ]
    asyncio.run(record(f"sqlite:///{db}", script))
    config = str(config_file(tmp_path, db, storage='retention = "30d"'))
    (run,) = cli_json("cleanup", "run", "--config", config)
    assert run["policy"] == "storage.retention"
    assert [a["session"] for a in run["actions"]] == ["due"]
    assert rows(db, "select id from sessions") == [("fresh",)]


def test_retention_keeps_a_month_that_holds_a_session_that_ended_lately(
    pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL drops a month's partition whole: not while it holds frames of a
    session that ended within the retention (it began long ago, it is not due)."""
    import asyncpg

    from recorder.db.partitions import months

    old = now_us() - 90 * DAY
    (name, low, high) = months(old, 1)[0]

    async def make() -> None:
        conn = await asyncpg.connect(pg_url)
        db, _, _ = await writer_database(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        await db.shutdown()
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF frames '
            f"FOR VALUES FROM ({low}) TO ({high})"
        )
        await conn.close()
        await record(
            pg_url.replace("postgresql://", "postgresql+asyncpg://"),
            [
                (old, IN, status("done-then", "completed")),
                (old + SECOND, IN, status("long", "running")),
                (now_us() - SECOND, IN, status("long", "completed")),
            ],
        )

    asyncio.run(make())
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nurl = "{pg_url}"\nretention = "30d"\n')
    (run,) = cli_json("cleanup", "run", "--config", str(config))
    assert not any("partition" in a for a in run["actions"])
    assert [a["session"] for a in run["actions"]] == ["done-then"]

    async def left() -> list[Any]:
        conn = await asyncpg.connect(pg_url)
        try:
            return list(await conn.fetch("SELECT session_id, count(*) FROM frames GROUP BY 1"))
        finally:
            await conn.close()

    assert [tuple(r) for r in asyncio.run(left())] == [("long", 2)]


class Stalling(Direct):
    """Operations run directly; the chosen one stops for good after ``steps`` of it,
    as a run stops where a kill or a stop finds it (each step is its own transaction)."""

    def __init__(self, db: Any, store: Any, kind: type[Any], steps: int) -> None:
        super().__init__(db, store)
        self.kind, self.left = kind, steps
        self.stalled = asyncio.Event()

    async def perform(self, operation: Operation[T]) -> T:
        if isinstance(operation, self.kind):
            if self.left == 0:
                self.stalled.set()
                await asyncio.Event().wait()
            self.left -= 1
        return await super().perform(operation)


def purge_config(tmp_path: Path, db: Path) -> Config:
    return load_config(
        config_file(tmp_path, db, policy("bye", "purge", 'status = ["completed"]')), env={}
    )


async def test_a_purge_cut_short_leaves_a_trace_and_the_next_run_finishes_it(
    tmp_path: Path,
) -> None:
    """A purge killed part-way used to leave no audit row, and `show` called the half
    purged session complete. The row is written before it acts and counts each step's
    frames in that step's transaction; the session is marked; the next run says the
    cut-short run was interrupted and finishes the purge."""
    db = tmp_path / "recorder.db"
    url = f"sqlite:///{db}"
    base = now_us() - DAY
    total = 5 * PURGE_CHUNK
    script = [(base, IN, status("big", "running"))]
    script += [(base + i, IN, chunk("big", "x")) for i in range(1, total - 1)]
    script += [(base + total, IN, status("big", "completed"))]
    await record(url, script)
    config = purge_config(tmp_path, db)
    handle, store, _ = await writer_database(url)
    try:
        stalling = Stalling(handle, store, PurgeSome, steps=3)
        cleanup = Cleanup(config, stalling, None)
        task = asyncio.create_task(cleanup.run(config.cleanup.policies[0]))
        await asyncio.wait_for(stalling.stalled.wait(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await handle.shutdown()

    assert rows(db, "select state, frames, matched from cleanup_runs") == [
        ("running", 3 * PURGE_CHUNK, 1)
    ]
    assert rows(db, "select cleanup_state, frame_count from sessions") == [
        ("purging 1", total - 3 * PURGE_CHUNK)
    ]
    (seen,) = cli_json("cleanup", "history", "--database", str(db))
    assert (seen["state"], seen["frames"]) == ("interrupted", 3 * PURGE_CHUNK)
    # `show` says what is missing, in text and in JSON (it said "Gaps: none").
    text = CliRunner().invoke(cli, ["show", "--database", str(db), "big"]).stdout
    assert (
        f"partly purged: a cleanup run is part-way through it, or was cut short there ({total - 3 * PURGE_CHUNK:,} frames left)"
        in text
    )
    assert cli_json("show", "--database", str(db), "big")["partly"] == "purged"

    handle, store, _ = await writer_database(url)
    try:
        await Cleanup(config, Direct(handle, store), None).run(config.cleanup.policies[0])
    finally:
        await handle.shutdown()
    assert rows(db, "select state, frames, acted from cleanup_runs order by id") == [
        ("interrupted", 3 * PURGE_CHUNK, 0),
        ("done", total - 3 * PURGE_CHUNK, 1),
    ]
    assert rows(db, "select count(*) from sessions") == [(0,)]
    assert rows(db, "select count(*) from frames") == [(0,)]


def test_a_run_whose_every_action_failed_says_why(tmp_path: Path) -> None:
    """A purge that failed for disk space recorded runs with error null."""
    db = tmp_path / "recorder.db"
    asyncio.run(record(f"sqlite:///{db}", [(now_us() - DAY, IN, status("s", "completed"))]))
    with sqlite3.connect(db) as conn:  # the database refuses, as a full disk would
        conn.execute(
            "CREATE TRIGGER refuse BEFORE DELETE ON frames "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    config = str(config_file(tmp_path, db, policy("bye", "purge", 'status = ["completed"]')))
    (run,) = cli_json("cleanup", "run", "--config", config)
    assert run["acted"] == 0
    assert run["error"].startswith("every action failed (1); the first: IntegrityError")
    assert "database or disk is full" in run["error"]


async def test_compaction_goes_in_bounded_steps(tmp_path: Path) -> None:
    """Compacting a session of a million chunks held them all in the database process
    (1 GB) and stalled ingest for 13.5 s. Steps of the purge's size, and text that
    streams into its frame: memory stays flat whatever the session's length."""
    db = tmp_path / "recorder.db"
    url = f"sqlite:///{db}"
    base = now_us() - DAY
    pieces = [f"{i:06d}" + "y" * 994 for i in range(12_000)]  # 12 MB of text
    script = [(base, IN, status("long", "running"))]
    script += [(base + i, IN, chunk("long", text)) for i, text in enumerate(pieces, 1)]
    script += [(base + len(pieces) + 1, IN, status("long", "completed"))]
    await record(url, script)
    config = load_config(
        config_file(tmp_path, db, policy("fold", "compact", 'status = ["completed"]')), env={}
    )
    handle, store, _ = await writer_database(url)
    try:
        tracemalloc.start()
        actor = Cleanup(config, Direct(handle, store), None).actor
        run = Run(config.cleanup.policies[0], "cli", False, now_us(), through_id=2**62)
        done = await Compact().act(actor, run, "long")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        await handle.shutdown()
    assert done == {"result": f"compacted {len(pieces)} chunks into 6 frames", "done": True}
    # Flat: about 11 MiB for 6 000, 12 000 or 24 000 chunks (a step and one frame).
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB"
    texts = [
        json.loads(payload)["data"]["text"]
        for (payload,) in rows(
            db, "select payload from frames where type = 'stream_compacted' order by id"
        )
    ]
    # A frame takes appended text until it holds a MiB: steps of 2 MB give 2 to 3 MB.
    assert len(texts) == 6 and all(len(t) < 4 * 2**20 for t in texts)
    assert "".join(texts) == "".join(pieces)
    assert rows(db, "select count(*) from frames where type = 'stream_chunk'") == [(0,)]
    assert rows(db, "select cleanup_state, frame_count from sessions") == [(None, 6 + 2)]
    (count,) = rows(db, "select count(*) from frames")[0]
    assert rows(db, "select sum(frame_count) from connections") == [(count,)]
    assert rows(db, "select sum(frames) from frame_days") == [(count,)]
    (size,) = rows(db, "select sum(size) from frames")[0]
    assert rows(db, "select sum(bytes) from frame_days") == [(size,)]


class StuckLink:
    """A daemon link whose send never completes (a daemon that stopped reading)."""

    def __init__(self) -> None:
        self.sending = asyncio.Event()

    async def request(self, text: str) -> bool:
        self.sending.set()
        await asyncio.Event().wait()
        return False


async def test_one_stuck_policy_never_holds_another_back(tmp_path: Path) -> None:
    """A stop_session that hung on a daemon that stopped reading kept every other
    policy from running: a dry run scheduled every 2 s ran 0 times in a minute."""
    db = tmp_path / "recorder.db"
    url = f"sqlite:///{db}"
    await record(url, [(now_us() - DAY, IN, status("s", "completed"))])
    stop = policy("stop", "stop_session", 'status = ["completed"]')
    look = policy("look", "purge", 'status = ["completed"]', dry_run=True)
    config = load_config(config_file(tmp_path, db, stop + look), env={})
    handle, store, _ = await writer_database(url)
    link = StuckLink()
    cleanup = Cleanup(config, Direct(handle, store), link)  # type: ignore[arg-type]
    stuck = asyncio.create_task(cleanup.run(cleanup.policies["stop"]))
    try:
        await asyncio.wait_for(link.sending.wait(), 10)
        run_id = await asyncio.wait_for(cleanup.run(cleanup.policies["look"]), 10)
    finally:
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        await handle.shutdown()
    assert rows(db, f"select state, actions from cleanup_runs where id = {run_id}") == [
        ("done", '[{"session": "s", "result": "would purge"}]')
    ]


async def test_a_stop_the_daemon_refuses_is_retried_with_backoff_then_given_up(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    """A daemon that answered every stop with a 10 MB error was asked again on every
    run: 27 x 10 MB in 20 s. Now: a few times, further apart, then given up."""
    stops: list[str] = []

    async def daemon(ws: Any) -> None:
        await ws.send('{"type":"health_check_response","healthy":true}')
        await ws.send(status("s1", "completed").decode())
        async for message in ws:
            if json.loads(message).get("type") == "stop_session":
                stops.append(message)
                await ws.send(json.dumps({"type": "error", "error": "no " + "x" * 100_000}))

    async with websockets.serve(daemon, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        config = with_policies(
            make_config(f"ws://127.0.0.1:{port}", proxy={"enabled": False}),
            policy("stop", "stop_session", 'status = ["completed"]'),
        )
        async with running(config) as svc:
            await wait_for_frame(svc, "type = 'session_status_update'")
            assert svc.cleanup is not None
            stop = svc.cleanup.policies["stop"]
            results = []
            for _ in range(StopSession.ATTEMPTS + 2):
                run_id = await svc.cleanup.run(stop)
                rows_ = rows(db_path, f"select actions from cleanup_runs where id = {run_id}")
                results.append(json.loads(rows_[0][0])[0]["result"])
                # The backoff's wait, passed at once: the next run may send again.
                with sqlite3.connect(db_path) as conn:
                    conn.execute("update cleanup_matches set retry_us = 0")
    assert results[0] == "requested"
    assert results[1 : StopSession.ATTEMPTS] == [
        f"requested again ({n} of {StopSession.ATTEMPTS})"
        for n in range(2, StopSession.ATTEMPTS + 1)
    ]
    assert (
        results[StopSession.ATTEMPTS :]
        == [f"given up: still matching after {StopSession.ATTEMPTS} stop requests"] * 2
    )
    assert len(stops) == StopSession.ATTEMPTS


def with_policies(config: Config, text: str) -> Config:
    path = Path(config.source)
    path.write_text(path.read_text() + text)
    return load_config(path, env={})


async def test_a_stop_is_not_sent_again_before_its_backoff(tmp_path: Path) -> None:
    db = tmp_path / "recorder.db"
    await record(f"sqlite:///{db}", [(now_us() - DAY, IN, status("s1", "completed"))])
    sent: list[str] = []

    class Link:
        async def request(self, text: str) -> bool:
            sent.append(text)
            return True

    stop = policy("stop", "stop_session", 'status = ["completed"]')
    config = load_config(config_file(tmp_path, db, stop), env={})
    handle, store, _ = await writer_database(f"sqlite:///{db}")
    try:
        cleanup = Cleanup(config, Direct(handle, store), Link())  # type: ignore[arg-type]
        first = await cleanup.run(cleanup.policies["stop"])
        second = await cleanup.run(cleanup.policies["stop"])
    finally:
        await handle.shutdown()
    said = dict(rows(db, "select id, actions from cleanup_runs"))
    assert json.loads(said[first])[0]["result"] == "requested"
    assert json.loads(said[second])[0]["result"].startswith("waiting")
    assert len(sent) == 1


def test_cleanup_policies_says_when_a_file_has_none(tmp_path: Path) -> None:
    db = tmp_path / "recorder.db"
    config = config_file(tmp_path, db)
    result = CliRunner().invoke(cli, ["cleanup", "policies", "--config", str(config)])
    assert result.exit_code == 0
    assert result.stderr == (
        f"no cleanup policies in {config}: a recorder running with it (or reloaded with it) "
        "stops, compacts and purges nothing\n"
    )


async def test_a_reload_that_drops_every_policy_says_what_it_removes(
    make_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGHUP with an emptied file silently dropped every policy ("policies: 0", at
    info). It is a warning naming what stops being done."""
    config = with_policies(
        make_config("ws://127.0.0.1:9", storage={"retention": "30d"}),
        policy("stop", "stop_session", 'status = ["completed"]'),
    )
    async with running(config) as svc:
        Path(config.source).write_text("")
        capsys.readouterr()
        await svc.reload()
        assert svc.cleanup is not None and svc.cleanup.policies == {}
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (reloaded,) = [e for e in lines if e["event"].startswith("configuration reloaded")]
    assert reloaded["event"] == "configuration reloaded; cleanup policies removed"
    assert reloaded["level"] == "warning"
    assert reloaded["removed"] == ["stop", "storage.retention"]
