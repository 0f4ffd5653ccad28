"""A WebSocket client of the simulated daemon, for its tests."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from recorder.simulator import HEALTH_CHECK_FRAME, Simulator, SimulatorOptions

TIMEOUT = 5.0
# A time as the daemon writes it (JavaScript's toISOString).
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def options(**overrides: Any) -> SimulatorOptions:
    settings: dict[str, Any] = {"port": 0, "chunk_delay": 0.0, "seed": 1234}
    settings.update(overrides)
    return SimulatorOptions(**settings)


async def recv_text(ws: ClientConnection) -> str:
    async with asyncio.timeout(TIMEOUT):
        message = await ws.recv()
    assert isinstance(message, str)
    return message


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(await recv_text(ws))
    assert isinstance(frame, dict)
    return frame


async def open_client(sim: Simulator, **kwargs: Any) -> ClientConnection:
    ws = await connect(sim.url, max_size=None, **kwargs)
    assert await recv_text(ws) == HEALTH_CHECK_FRAME
    return ws


async def recv_until(ws: ClientConnection, last_type: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = await recv_json(ws)
        frames.append(frame)
        if frame["type"] == last_type:
            return frames


async def expect_close(ws: ClientConnection) -> ConnectionClosed:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv()
    return info.value


async def http_get(port: int, path: str) -> tuple[int, Headers, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    async with asyncio.timeout(TIMEOUT):
        raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = Headers([(k, v) for k, v in (line.split(": ", 1) for line in lines)])
    return int(status_line.split()[1]), headers, body
