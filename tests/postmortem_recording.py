"""A real recording for the postmortem tests: the service, its proxy and a simulated
daemon; a UI that spawns a session, asks a second task and about a session that does
not exist; and a session the link alone watches across a forced disconnect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import proxy_recording_config, running
from tests.helpers import query, wait_until

TIMEOUT = 30


def spawn_request(orchestrator: str, description: str) -> dict[str, Any]:
    return {
        "type": "spawn_session",
        "payload": {
            "orchestratorId": orchestrator,
            "task": {"type": "code", "description": description, "priority": "high"},
            "sessionType": "claude-code",
            "memoryProfile": "default",
        },
    }


class Recording:
    """What the module's recording holds, as the simulator saw it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ui_session = ""
        self.gap_session = ""
        self.tool_calls_sent = 0
        self.ui_frames: list[dict[str, Any]] = []


async def ui_conversation(url: str, rec: Recording) -> None:
    """A UI through the proxy: spawn, a second task, a question about a session
    that does not exist."""
    async with connect(url) as ws:
        await ws.recv()  # health check
        await ws.send(json.dumps(spawn_request("vp_7", "Implement feature X")))
        while True:
            message = json.loads(await ws.recv())
            rec.ui_frames.append(message)
            if message["type"] == "tool_call_start":
                rec.tool_calls_sent += 1
            if message["type"] == "session_spawned":
                rec.ui_session = message["session"]["id"]
                break
        await ws.send(
            json.dumps(
                {"type": "execute_task", "payload": {"sessionId": rec.ui_session, "task": "Fix it"}}
            )
        )
        await ws.send(
            json.dumps({"type": "session_status", "payload": {"sessionId": "session_nope"}})
        )
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "error":
                break


async def status_of(ws: ClientConnection, session_id: str | None, status: str) -> str:
    """Read broadcasts until a session (any, if None) has ``status``; its id."""
    while True:
        message = json.loads(await ws.recv())
        session = message.get("session") or {}
        if message["type"] == "session_status_update" and session.get("status") == status:
            if session_id is None or session["id"] == session_id:
                return str(session["id"])


async def record(path: Path, tmp: Path) -> Recording:
    rec = Recording(path)
    opts = SimulatorOptions(port=0, chunk_delay=0.005, seed=5, fail_rate=0.0)
    async with Simulator(opts) as sim:
        config = proxy_recording_config(tmp, sim.url, path, reconnect={"base": 0.2, "cap": 0.4})
        async with running(config) as svc:
            assert svc.proxy is not None
            await ui_conversation(f"ws://127.0.0.1:{svc.proxy.port}", rec)
            # A session the link alone watches, active across a forced disconnect.
            sim.options.chunk_delay = 0.3
            sim.options.chunks_per_task = (4, 4)
            spawn = spawn_request("vp_gap", "Outlive a restart")
            async with connect(sim.url) as spawner:
                await spawner.recv()
                await spawner.send(json.dumps(spawn))
                rec.gap_session = await status_of(spawner, None, "running")
                connections = sim.total_connections
                await sim.disconnect_all()
            await sim.wait_connections(connections + 1, timeout=TIMEOUT)  # the link is back
            async with connect(sim.url) as watcher:
                await status_of(watcher, rec.gap_session, "completed")

            async def recorded_as_completed() -> bool:
                rows = await query(
                    svc, "select status from sessions where id = :id", id=rec.gap_session
                )
                return [r.status for r in rows] == ["completed"]

            await wait_until(svc, recorded_as_completed, timeout=TIMEOUT)
            await svc.writer.flush()
    return rec
