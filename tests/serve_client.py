"""A client of ``recorder replay --serve``'s ReplayServer, for its tests: the server on
a free loopback port in the test's event loop, and a client that sees each frame's
opcode and exact bytes; or the command itself as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, cast

import pytest
from websockets.asyncio.client import connect

from recorder.capture.wire import RecordingClientConnection
from recorder.replay.plan import ReplayFrame
from recorder.replay.serve import Recorded as Recorded_
from recorder.replay.serve import ReplayServer
from recorder.replay.timing import Pace

TIMEOUT = 20
# Long enough to show that a frame is not coming; only ever waited out in full then.
NOT_YET = 0.3
INSTANT = Pace(instant=True)

Wire = tuple[bool, bytes]


@asynccontextmanager
async def serving(conversation: Recorded_, **options: Any) -> AsyncIterator[ReplayServer]:
    """A ReplayServer on a free loopback port, in this event loop; cancelled on exit."""
    options.setdefault("pace", INSTANT)
    server = ReplayServer(conversation, **options)
    listening = asyncio.Event()
    task = asyncio.create_task(server.run("127.0.0.1", 0, ready=lambda port: listening.set()))
    try:
        async with asyncio.timeout(TIMEOUT):
            ready = asyncio.create_task(listening.wait())
            await asyncio.wait((ready, task), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
        yield server
    finally:
        task.cancel()
        async with asyncio.timeout(TIMEOUT):
            with suppress(asyncio.CancelledError):
                await task


def url(server: ReplayServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/{query}"


@asynccontextmanager
async def client(address: str, **options: Any) -> AsyncIterator[RecordingClientConnection]:
    """A client that sees each frame's opcode and exact bytes."""
    async with connect(address, create_connection=RecordingClientConnection, **options) as ws:
        yield cast(RecordingClientConnection, ws)  # connect() is not generic in its class


async def recv(ws: RecordingClientConnection, timeout: float = TIMEOUT) -> Wire:
    async with asyncio.timeout(timeout):
        return await ws.recv_raw()


async def nothing_yet(ws: RecordingClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await recv(ws, NOT_YET)


async def ask(ws: RecordingClientConnection, obj: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(obj))
    is_text, data = await recv(ws)
    assert is_text
    answer: dict[str, Any] = json.loads(data)
    return answer


def wire(frame: ReplayFrame) -> Wire:
    return frame.is_text, frame.data


def served(db_path: Path, sid: str, *more: str) -> tuple[subprocess.Popen[bytes], str]:
    """`recorder replay SID --serve 127.0.0.1:0 --instant MORE` and its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    args = ["replay", "--database", str(db_path), sid, "--serve", "127.0.0.1:0", "--instant"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", *args, *more],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert "as a daemon on ws://" in line, line
    return proc, line.split()[-1]
