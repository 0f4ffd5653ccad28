"""A daemon that stops reading cannot hold the recorder: sends are bounded, the
heartbeat notices, and the stop takes at most storage.shutdown_timeout."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from recorder.capture.dial import not_reading
from recorder.config import Config
from recorder.service.lifecycle import Service
from tests.conftest import running
from tests.helpers import query

TIMEOUT = 20
# More than the kernel's buffers hold between the recorder and a daemon whose receive
# buffer is small (the send buffer autotunes up to 4 MiB): a send of it waits for the
# daemon to read. Random, so that no compression could shrink it.
BIG = base64.b64encode(os.urandom(6 << 20)).decode()


class DeafDaemon:
    """A WebSocket server on 127.0.0.1 whose connections ``deaf(n)`` (n from 1) never
    read their socket; the others read (and answer pings). ``chatter``: the deaf ones
    send a frame every 20 ms, so that the recorder keeps receiving."""

    def __init__(self, deaf: Callable[[int], bool], *, chatter: bool = False) -> None:
        self.deaf = deaf
        self.chatter = chatter
        self.connections: list[ServerConnection] = []
        self.arrived = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def wait_connections(self, n: int) -> None:
        async with asyncio.timeout(TIMEOUT), self.arrived:
            await self.arrived.wait_for(lambda: len(self.connections) >= n)

    async def _handle(self, ws: ServerConnection) -> None:
        async with self.arrived:
            self.connections.append(ws)
            number = len(self.connections)
            self.arrived.notify_all()
        if not self.deaf(number):
            async for _ in ws:
                pass
            return
        ws.transport.pause_reading()
        while self.chatter:
            await ws.send('{"type":"daemon_status_update","payload":{}}')
            await asyncio.sleep(0.02)
        await ws.wait_closed()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[DeafDaemon]:
        sock = socket.socket()
        # A small receive buffer, fixed (no autotuning): the daemon's kernel soon holds
        # all it will take.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        server = await serve(self._handle, sock=sock, compression=None, max_size=None)
        try:
            yield self
        finally:
            for ws in self.connections:
                ws.transport.abort()
            server.close()
            await server.wait_closed()


async def wait_backed_up(ws: Any) -> None:
    """Until more waits in our write buffer than the peer takes (it is not reading)."""
    async with asyncio.timeout(TIMEOUT):
        while not not_reading(ws):  # noqa: ASYNC110 - no event says so: polled
            await asyncio.sleep(0.01)


async def test_a_request_the_daemon_does_not_read_fails_in_time_and_the_link_redials(
    make_config: Callable[..., Config],
) -> None:
    """`Link.request` waited for ever on a daemon that stopped reading (the cleanup's
    stop_session held for more than 60 s). Now it returns False within the send
    timeout (heartbeat.timeout), and the connection is dropped and re-dialled."""
    async with DeafDaemon(lambda n: n == 1).serving() as daemon:
        config = make_config(daemon.url, heartbeat={"interval": 30.0, "timeout": 0.5})
        async with running(config) as svc:
            await asyncio.wait_for(svc.link.connected.wait(), TIMEOUT)
            started = time.monotonic()
            sent = await asyncio.wait_for(svc.link.request(BIG), TIMEOUT)
            took = time.monotonic() - started
            assert sent is False and took < 0.5 + 0.5, took
            await daemon.wait_connections(2)
            async with asyncio.timeout(TIMEOUT):
                while not (svc.link.connections == 2 and svc.link.connected.is_set()):
                    await asyncio.wait_for(svc.link.connected.wait(), TIMEOUT)
                    await asyncio.sleep(0)
            # The new connection reads: a request goes through.
            assert await svc.link.request('{"type":"daemon_status"}')
            (first,) = await query(svc, "select * from connections where id = 1")
            big = await query(svc, "select id from frames where size > 1000000")
    assert first.closed_by == "local" and first.close_code == 1006
    assert first.error.startswith("send timeout: the daemon read nothing for 0.5s")
    assert big == []  # it never reached the daemon whole: not recorded as sent


async def test_the_heartbeat_drops_a_daemon_that_sends_but_does_not_read(
    make_config: Callable[..., Config],
) -> None:
    """Frames kept arriving, so the heartbeat took the daemon for alive, though it read
    nothing (no pong ever came). Now the connection is dropped and re-dialled within
    interval + 2 x timeout."""
    async with DeafDaemon(lambda n: n == 1, chatter=True).serving() as daemon:
        config = make_config(daemon.url, heartbeat={"interval": 0.2, "timeout": 0.3})
        async with running(config) as svc:
            await daemon.wait_connections(1)
            started = time.monotonic()
            await daemon.wait_connections(2)
            took = time.monotonic() - started
            (first,) = await query(svc, "select * from connections where id = 1")
            received = await query(
                svc, "select count(*) as n from frames where connection_id = 1 and direction = 'in'"
            )
    assert took < 0.2 + 2 * 0.3 + 1.0, took
    assert first.error == (
        "heartbeat timeout: frames arrive but no pong within 0.6s of a ping: not reading"
    )
    assert received[0].n > 5  # it was sending all along


async def test_the_stop_takes_at_most_the_drain_timeout_whatever_the_daemon_does(
    make_config: Callable[..., Config],
) -> None:
    """A daemon that reads nothing, from the link or from a UI's proxied conversation,
    both with a send waiting on it: closing the link took 10 s ("link did not close
    within 10 s"), and a proxied upstream held the stop for ever. Now the stop ends
    within storage.shutdown_timeout, and the frames recorded are committed."""
    async with DeafDaemon(lambda n: True).serving() as daemon:
        config = make_config(
            daemon.url,
            heartbeat={"interval": 60.0, "timeout": 60.0},
            storage={"shutdown_timeout": 3.0},
        )
        service = Service(config)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        async with asyncio.timeout(TIMEOUT):
            await service.started.wait()
            await service.link.connected.wait()
        request = asyncio.create_task(service.link.request(BIG))
        assert service.proxy is not None
        ui_url = f"ws://127.0.0.1:{service.proxy.port}"
        async with connect(ui_url, compression=None, max_size=None) as ui:
            await ui.send(BIG)
            await wait_backed_up(service.link._ws)
            await daemon.wait_connections(2)
            async with asyncio.timeout(TIMEOUT):
                while not service.proxy._upstreams:  # noqa: ASYNC110 - polled
                    await asyncio.sleep(0.01)
            (upstream,) = service.proxy._upstreams
            await wait_backed_up(upstream)
            stop.set()
            started = time.monotonic()
            code = await asyncio.wait_for(task, TIMEOUT)
            took = time.monotonic() - started
    assert took < 3.0 + 0.5, took
    assert code == 0
    assert await asyncio.wait_for(request, 1) is False
    # The UI's frame was recorded (it sent it), and committed within the stop.
    assert service.writer.committed == service.writer.queue.enqueued
