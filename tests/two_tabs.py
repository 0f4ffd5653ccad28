"""A recording as a real UI makes one, with a second browser tab that only watches.

Through the recorder's proxy, against the simulated daemon (which, like the
published one, answers a spawn with ``session_spawned`` only after the first run):

1. Tab A opens and sends ``spawn_session`` with :data:`SPAWN_TASK`.
2. Tab B opens from the same address, beside A, and only reads.
3. A learns the new session's id from ``list_sessions`` while the spawn still runs,
   as the web UI does, and sends ``execute_task`` with :data:`FOLLOW_UP`; it reads
   until ``session_spawned`` and the follow-up's reply have come.
4. A closes, then reconnects (a new connection opened after the old one closed),
   asks ``session_status`` for the session and stops it with ``stop_session``.
5. B reads until the stop's broadcast, then closes.

Used with ``asyncio.run(record(path, tmp))`` from a module-scoped fixture; the
recording is a SQLite file at ``path``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import proxy_recording_config, running
from tests.helpers import query, wait_until
from tests.postmortem_recording import spawn_request, status_of

TIMEOUT = 30
SPAWN_TASK = "Implement feature X"
FOLLOW_UP = "Then list the licences"
# What the simulated daemon says of a session stop_session ended.
STOPPED = "stopped"


@dataclass
class TwoTabs:
    """What the recording holds, as the tabs saw it."""

    path: Path
    session: str = ""
    # Every frame each tab received, parsed, in order.
    tab_a: list[dict[str, Any]] = field(default_factory=list)
    tab_b: list[dict[str, Any]] = field(default_factory=list)
    # The task replies tab A received, by taskId.
    outcomes: dict[str, str] = field(default_factory=dict)


def daemon(**changes: Any) -> SimulatorOptions:
    """The daemon the recording is made against, as a fresh one, with ``changes``. The
    follow-up arrives while the first run is still under way: slow chunks."""
    opts = SimulatorOptions(
        port=0, chunk_delay=0.05, chunks_per_task=(6, 6), seed=11, fail_rate=0.0
    )
    for name, value in changes.items():
        setattr(opts, name, value)
    return opts


async def _read(ws: ClientConnection, into: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await ws.recv())
    into.append(message)
    return message


async def _learn_id(ws: ClientConnection, rec: TwoTabs) -> str:
    """Ask ``list_sessions`` until the spawn's session is listed (it is while it runs)."""
    while True:
        await ws.send(json.dumps({"type": "list_sessions"}))
        while (message := await _read(ws, rec.tab_a))["type"] != "sessions_list":
            pass
        for session in message["sessions"]:
            if session.get("task", {}).get("description") == SPAWN_TASK:
                return str(session["id"])


async def _tab_a_first(url: str, rec: TwoTabs, tab_b_open: Any) -> None:
    async with connect(url) as ws:
        await _read(ws, rec.tab_a)  # the hello
        await ws.send(json.dumps(spawn_request("vp_tabs", SPAWN_TASK)))
        await tab_b_open()
        rec.session = await _learn_id(ws, rec)
        task = {"sessionId": rec.session, "task": FOLLOW_UP}
        await ws.send(json.dumps({"type": "execute_task", "payload": task}))
        spawned = False
        while not spawned or FOLLOW_UP not in rec.outcomes:
            message = await _read(ws, rec.tab_a)
            spawned = spawned or message["type"] == "session_spawned"
            if message["type"] in ("task_completed", "task_failed"):
                rec.outcomes[str(message["taskId"])] = message["type"]


async def _tab_a_again(url: str, rec: TwoTabs) -> None:
    async with connect(url) as ws:
        await _read(ws, rec.tab_a)
        payload = {"sessionId": rec.session}
        await ws.send(json.dumps({"type": "session_status", "payload": payload}))
        while (await _read(ws, rec.tab_a))["type"] != "session_status_update":
            pass
        await ws.send(json.dumps({"type": "stop_session", "payload": payload}))
        await status_of(ws, rec.session, STOPPED)


async def record(path: Path, tmp: Path) -> TwoTabs:
    rec = TwoTabs(path)
    async with Simulator(daemon()) as sim:
        config = proxy_recording_config(tmp, sim.url, path)
        async with running(config) as svc:
            assert svc.proxy is not None
            url = f"ws://127.0.0.1:{svc.proxy.port}"
            tab_b: ClientConnection | None = None

            async def open_tab_b() -> None:
                nonlocal tab_b
                tab_b = await connect(url)
                await _read(tab_b, rec.tab_b)

            await _tab_a_first(url, rec, open_tab_b)
            await _tab_a_again(url, rec)
            assert tab_b is not None
            async with tab_b:
                while True:
                    message = await _read(tab_b, rec.tab_b)
                    session = message.get("session") or {}
                    if session.get("id") == rec.session and session["status"] == STOPPED:
                        break

            async def all_closed() -> bool:
                sql = "select count(*) as n from connections where role = 'proxy'"
                rows = await query(svc, sql + " and closed_at_us is null")
                return bool(rows[0].n == 0)

            await wait_until(svc, all_closed, timeout=TIMEOUT)
            await svc.writer.flush()
    return rec
