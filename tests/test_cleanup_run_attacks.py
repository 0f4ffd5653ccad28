"""Regression tests from an attack on cleanup runs: a frame written during a purge, a
daemon that ignores its stops, a session that streams on after it ended, a policy
named like a built-in one, a reload or a history read while a run is at work. Real
parts only: the writer's own code builds the databases, the real Cleanup runs on
them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from recorder.cleanup.jobs import Cleanup, Direct
from recorder.config import Config
from recorder.pipeline.classifier import Classifier
from recorder.pipeline.cleanup_ops import TakeRequests
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.cleanup_scripts import (
    DAY,
    Pausing,
    chunk,
    config_for,
    open_db,
    policy,
    record,
    rows,
    run_policy,
    status,
    with_policies,
)
from tests.conftest import running
from tests.helpers import query, wait_for_frame

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
    run_id = await run_policy(config, "stop")
    (size,) = rows(db, f"select length(actions) from cleanup_runs where id = {run_id}")[0]
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


def test_a_policy_may_not_take_a_built_in_policys_name(tmp_path: Path) -> None:
    """A policy named "storage.retention" was taken for the retention by its name: on
    PostgreSQL it dropped whole months whatever its own conditions said, and with
    storage.retention set it was silently replaced (dry_run = true included)."""
    from recorder.config import ConfigError

    failed_only = policy("storage.retention", "purge", 'status = ["failed"]')
    with pytest.raises(ConfigError, match=r"'storage\.retention' is reserved"):
        config_for(tmp_path, "sqlite:///x.db", failed_only)


async def finished_a_day_ago(tmp_path: Path) -> tuple[Path, str, Config]:
    """A database with one session of 5 000 frames, completed a day ago, and a config
    whose policy "bye" purges completed sessions."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    script = [(t, IN, status("s", "running"))]
    script += [(t + i, IN, chunk("s", "x")) for i in range(1, 5000)]
    await record(url, [*script, (t + 5000, IN, status("s", "completed"))])
    return db, url, config_for(tmp_path, url, policy("bye", "purge", 'status = ["completed"]'))


async def test_a_reload_does_not_cut_short_a_run_someone_asked_for(tmp_path: Path) -> None:
    """`recorder cleanup run` asks the service; a SIGHUP arrived while that run purged:
    the reload stopped the old cleanup, which cancelled the run half-way, and the CLI
    was told "the recorder stopped first", though it had not. Every SIGHUP (a config
    manager, logrotate) cut short every run in progress. A reload now changes the
    schedule and lets runs finish."""
    from recorder.db.cleanup_records import ask
    from recorder.pipeline.cleanup_ops import PurgeSome

    db, url, config = await finished_a_day_ago(tmp_path)
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

    db, url, config = await finished_a_day_ago(tmp_path)
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


class _PollFaults(Direct):
    """Operations run directly, but the cleanup's poll for requests fails the first
    time (a disk error) and waits for ever the second (a writer held up)."""

    def __init__(self, db: Any, store: Any) -> None:
        super().__init__(db, store)
        self.polls = 0
        self.held = asyncio.Event()

    async def perform(self, operation: Any) -> Any:
        if isinstance(operation, TakeRequests):
            self.polls += 1
            if self.polls == 1:
                raise OSError("disk I/O error")
            self.held.set()
            await asyncio.Event().wait()
        return await super().perform(operation)


async def test_a_poll_that_fails_or_that_the_stop_cuts_short_is_one_line(tmp_path: Path) -> None:
    """APScheduler reports a job that raised, or that its shutdown cancelled, with
    `Job "Cleanup.take_requests ..." raised an exception` and a traceback: a poll held
    up behind the writer when the service stopped printed one at each such stop. The
    poll's failure is now one line of our own, and the stop's cancellation none."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
    from structlog.testing import capture_logs

    from recorder.cleanup.jobs import REQUESTS

    url = f"sqlite:///{tmp_path / 'r.db'}"
    fast = '[cleanup]\npoll = "0.05s"\n' + policy("p", "purge", 'status = ["completed"]')
    config = config_for(tmp_path, url, fast)
    handle, store, _ = await open_db(url)
    ended: list[int] = []
    two = asyncio.Event()

    def seen(event: Any) -> None:
        if event.job_id == REQUESTS:
            ended.append(event.code)
            if len(ended) == 2:
                two.set()

    try:
        faults = _PollFaults(handle, store)
        cleanup = Cleanup(config, faults, None)
        with capture_logs() as logs, _apscheduler_records() as records:
            cleanup.start()
            assert cleanup._scheduler is not None
            cleanup._scheduler.add_listener(seen, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
            await asyncio.wait_for(faults.held.wait(), 10)
            await cleanup.stop()
            await asyncio.wait_for(two.wait(), 10)
    finally:
        await handle.shutdown()
    assert ended == [EVENT_JOB_EXECUTED, EVENT_JOB_EXECUTED]
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    failed = [e for e in logs if e["event"] == "cleanup requests could not be read"]
    assert [(e["log_level"], e["error"]) for e in failed] == [("error", "OSError: disk I/O error")]


@contextlib.contextmanager
def _apscheduler_records() -> Iterator[list[logging.LogRecord]]:
    """What APScheduler logs meanwhile (Cleanup.start sets its level to ERROR)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger, handler = logging.getLogger("apscheduler"), Keep()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
