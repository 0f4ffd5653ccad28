"""What the proxy's tests stand on either side of it: a bare upstream that remembers
what it was asked, and a UI's view of the proxy's port."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from recorder.service.lifecycle import Service
from tests.helpers import query

T = 10  # seconds: the longest any one wait of the proxy's tests takes


async def closed_by_proxy(ui: ClientConnection) -> None:
    """Wait (bounded) until the proxy closes this UI connection."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(T):
            while True:
                await ui.recv()


def proxy_port(svc: Service) -> int:
    """The port of the service's proxy (every config in these tests enables it)."""
    assert svc.proxy is not None
    return svc.proxy.port


def proxy_url(svc: Service, path: str = "/") -> str:
    """Where a UI dials the service's proxy, at ``path``."""
    return f"ws://127.0.0.1:{proxy_port(svc)}{path}"


class Upstream:
    """A bare upstream that remembers what it was asked and how it was closed."""

    def __init__(self, **serve_kwargs: Any) -> None:
        self.requests: list[tuple[str, Headers]] = []
        self.closes: list[tuple[int | None, str | None]] = []
        self.close_with: tuple[int, str] | None = None
        self.abort = False
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.kwargs = serve_kwargs

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.requests.append((ws.request.path, ws.request.headers))
        await ws.send('{"type":"health_check_response","healthy":true}')
        self.connected.set()
        try:
            if self.abort:
                await ws.recv()
                ws.transport.abort()
                return
            if self.close_with:
                await ws.recv()
                await ws.close(*self.close_with)
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closes.append((ws.close_code, ws.close_reason))
            self.done.set()

    async def __aenter__(self) -> Upstream:
        self.server = await serve(self.handler, "127.0.0.1", 0, **self.kwargs)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def closed_conversations(svc: Service, n: int) -> bool:
    """Whether exactly ``n`` proxied conversations are recorded as closed."""
    rows = await query(
        svc, "select 1 from connections where role='proxy' and closed_at_us is not null"
    )
    return len(rows) == n
