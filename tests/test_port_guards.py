"""Findings of an attack on the capture side as issue 17 left it: connections to the
proxy's port and to metrics.listen that never finish their handshake or request.
One test each; each failed before its fix."""

from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve

from recorder.config import Config
from tests.conftest import TIMEOUT, running, write_config
from tests.helpers import free_port

T = 10


def with_files(limit: int) -> Callable[[], None]:
    """A preexec_fn that lets the child hold at most ``limit`` open files."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_idle_connections_to_the_proxy_port_do_not_keep_the_link_from_dialling(
    tmp_path: Path,
) -> None:
    """A stall of the recording, from anyone who reaches the proxy's port (no token
    needed: the handshake is never sent). systemd gives a service 1024 descriptors
    (DefaultLimitNOFILE; the unit sets no LimitNOFILE); TCP connections that never
    complete a handshake are held open_timeout (10 s) each, without limit (max_clients
    counts only handshakes that arrive). With them taking every descriptor, the link
    cannot dial ("cannot reach daemon: [Errno 24] Too many open files", every attempt)
    and the log fills with accept() tracebacks (~65 lines a second). Here a limit of 256
    and 300 idle connections; the daemon comes up after them."""
    daemon_port, proxy_port = free_port(), free_port()
    config = write_config(
        tmp_path / "c.toml",
        {
            "daemon": {"url": f"ws://127.0.0.1:{daemon_port}", "open_timeout": 2.0},
            "reconnect": {"base": 0.1, "factor": 1.0, "cap": 0.2},
            "storage": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
            "proxy": {"listen": f"127.0.0.1:{proxy_port}"},
            "log": {"format": "json"},
        },
    )
    recorder = subprocess.Popen(
        [sys.executable, "-m", "recorder", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=with_files(256),
    )
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", proxy_port)).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the proxy never listened"
                time.sleep(0.05)  # nothing to wait on but the port: polled
        for _ in range(300):
            conn = socket.create_connection(("127.0.0.1", proxy_port))
            conn.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
            idle.append(conn)
        dialled = asyncio.run(daemon_dialled(daemon_port, within=5.0))
    finally:
        for conn in idle:
            conn.close()
        recorder.terminate()
        recorder.wait(TIMEOUT)
    assert dialled, "the link could not dial while idle clients held the proxy's port"


async def daemon_dialled(port: int, *, within: float) -> bool:
    """Whether the recorder's link dials a daemon that listens from now on, in time."""
    dialled = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        dialled.set()
        async for _ in ws:
            pass

    async with serve(handler, "127.0.0.1", port):
        try:
            await asyncio.wait_for(dialled.wait(), within)
        except TimeoutError:
            return False
    return True


async def test_idle_connections_to_the_metrics_port_are_bounded(
    make_config: Callable[..., Config],
) -> None:
    """The same on metrics.listen: every accepted connection waited 10 s for its
    request, without limit. Past metrics.MAX_CONNECTIONS a new one is closed at once,
    and a scraper asks again once the idle ones have gone."""
    from recorder.service.metrics import MAX_CONNECTIONS, serve_metrics

    async with running(make_config("ws://127.0.0.1:9")) as svc:
        server = await serve_metrics(svc.snapshot, None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(T):
                assert await answered(reader) == b""  # closed without an answer
            writer.close()
            for _, idle_writer in idle:
                idle_writer.close()
            async with asyncio.timeout(T):
                while True:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"GET /metrics HTTP/1.1\r\nHost: r\r\n\r\n")
                    answer = await answered(reader)
                    writer.close()
                    if answer:  # the idle ones are gone once their handlers have seen it
                        break
            assert answer.startswith(b"HTTP/1.1 200")
        finally:
            server.close()


async def answered(reader: asyncio.StreamReader) -> bytes:
    """What the server answered before closing; nothing when it reset the connection."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""
