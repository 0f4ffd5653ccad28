"""Stops a daemon refuses or ignores (issue 17): a stuck stop never holds another
policy back, and a refused one is asked again with backoff, then given up."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

from recorder.cleanup.actions import StopSession
from recorder.cleanup.jobs import Cleanup, Direct
from recorder.config import Config, load_config
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.cleanup_scripts import DAY, config_file, policy, record, rows, status, with_policies
from tests.conftest import running
from tests.helpers import wait_for_frame, writer_database


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
