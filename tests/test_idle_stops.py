"""idle_for against the recorder's own requests (issue 17): a stop, or the status poll
after a reconnect, recorded with the session's id, is not the session at work; an
idle session stays idle, and a stop it ignores is given up. The real service, a
daemon on a real socket, the real Cleanup."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

from recorder.config import Config
from tests.cleanup_scripts import SECOND, policy, status, with_policies
from tests.conftest import running
from tests.helpers import query, wait_for_frame, wait_until


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
