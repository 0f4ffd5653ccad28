"""A recording made against a daemon like the published one (1.0.39): tab A alone,
learning its session's id from ``sessions_list`` as the web UI does (see
tests/two_tabs.py for the recording made with two tabs)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from recorder.config import load_config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config
from tests.postmortem_recording import spawn_request
from tests.two_tabs import FOLLOW_UP, SPAWN_TASK, TwoTabs, daemon

TIMEOUT = 60


def published(**changes: Any) -> SimulatorOptions:
    """Like the published daemon (1.0.39): no stream frames, and a spawn announced to
    nobody until session_spawned, after the first run: only sessions_list names it."""
    return daemon(streams=False, spawn_broadcast=False, **changes)


async def record_published(path: Path, tmp: Path) -> TwoTabs:
    """Tab A alone, against such a daemon, learning the id as the web UI does."""
    rec = TwoTabs(path)
    async with Simulator(published()) as sim:
        sections: dict[str, dict[str, Any]] = {
            "daemon": {"url": sim.url},
            "storage": {"url": f"sqlite:///{path}", "commit_interval": 0.05},
            "proxy": {"listen": "127.0.0.1:0"},
        }
        config = load_config(write_config(tmp / "config.toml", sections), env={})
        async with running(config) as svc, asyncio.timeout(TIMEOUT):
            assert svc.proxy is not None
            async with connect(f"ws://127.0.0.1:{svc.proxy.port}") as ws:
                await ws.recv()  # the hello
                await ws.send(json.dumps(spawn_request("vp_tabs", SPAWN_TASK)))
                while not rec.session:
                    await ws.send(json.dumps({"type": "list_sessions"}))
                    while (listed := json.loads(await ws.recv()))["type"] != "sessions_list":
                        pass
                    rec.session = next((s["id"] for s in listed["sessions"]), "")
                task = {"sessionId": rec.session, "task": FOLLOW_UP}
                await ws.send(json.dumps({"type": "execute_task", "payload": task}))
                seen: set[str] = set()
                while not {"session_spawned", "task_completed"} <= seen:
                    seen.add(json.loads(await ws.recv())["type"])
            await svc.writer.flush()
    return rec
