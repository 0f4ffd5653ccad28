"""A UI-like client for demos: it spawns sessions through the recorder's proxy, runs a
second task on each, and reads every stream chunk and tool call, as the web UI would.

    python -m recorder.simulator.ui ws://127.0.0.1:8788 --sessions 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import ClientConnection, connect

from recorder.protocol.daemon import dumps
from recorder.simulator.sessions import SpawnRequest

TASKS = (
    ("Implement feature X", "Add a regression test for it"),
    ("Investigate flaky reconnect test", "Write up what you found"),
    ("Refactor the session manager", "Review the diff"),
)


def spawn_request(request: SpawnRequest) -> str:
    """A UI's ``spawn_session``, as a browser's JSON.stringify writes it."""
    task = {
        "type": request.task_type,
        "description": request.description,
        "priority": request.priority,
        "status": request.task_status,
    }
    payload = {
        "orchestratorId": request.orchestrator_id,
        "task": task,
        "sessionType": request.session_type,
        "memoryProfile": request.memory_profile,
    }
    return dumps({"type": "spawn_session", "payload": payload})


def execute_request(session_id: str, task: str, stream: bool = True) -> str:
    """A UI's ``execute_task``: ``task`` is its text (the daemon's task frames use it as
    their ``taskId``)."""
    payload = {"sessionId": session_id, "task": task, "streamResponse": stream}
    return dumps({"type": "execute_task", "payload": payload})


async def _until(ws: ClientConnection, kinds: tuple[str, ...], **match: str) -> dict[str, object]:
    while True:
        message = json.loads(await ws.recv())
        if message.get("type") in kinds and all(message.get(k) == v for k, v in match.items()):
            return dict(message)


async def _connect(url: str, wait: float) -> ClientConnection:
    """Connect, retrying for up to ``wait`` seconds: the recorder may still be starting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            return await connect(url, max_size=None)
        except OSError:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def drive(url: str, sessions: int, wait: float = 15.0) -> list[str]:
    """Run the sessions one after another; returns their ids."""
    ids = []
    async with await _connect(url, wait) as ws:
        await ws.recv()  # the daemon's health check
        for n in range(sessions):
            first, second = TASKS[n % len(TASKS)]
            await ws.send(spawn_request(SpawnRequest("vp_demo", first, priority="high")))
            spawned = await _until(ws, ("session_spawned",))
            session = spawned["session"]
            assert isinstance(session, dict)
            sid = str(session["id"])
            ids.append(sid)
            await ws.send(execute_request(sid, second))
            await _until(ws, ("task_completed", "task_failed"), taskId=second)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the recorder's proxy (or a daemon)")
    parser.add_argument("--sessions", type=int, default=2)
    args = parser.parse_args()
    try:
        for sid in asyncio.run(drive(args.url, args.sessions)):
            print(sid)
    except OSError as exc:
        sys.exit(f"cannot reach {args.url}: {exc.strerror or exc}")


if __name__ == "__main__":
    main()
