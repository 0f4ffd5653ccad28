"""WebSocket clients that complete their handshake and then read nothing, and how far
a server's kernel queue towards them has backed up."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.conftest import TIMEOUT


def deaf_client(url: str) -> socket.socket:
    """A client that completes its handshake and then reads nothing, ever."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.connect((host, int(port)))
    conn.sendall(
        b"GET / HTTP/1.1\r\nHost: replay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return conn


def send_queue(client: socket.socket) -> int | None:
    """Bytes the server has queued in the kernel towards ``client`` (from /proc/net/tcp)."""
    port = client.getpeername()[1]
    mine = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[2].endswith(f":{mine:04X}"):
            return int(fields[4].split(":")[0], 16)
    return None


def wait_backed_up(clients: list[socket.socket]) -> None:
    """Until the server's kernel queue towards each client has stopped moving (full:
    the client reads nothing), looked at every 0.2 s."""
    deadline = time.monotonic() + TIMEOUT
    last: list[int | None] = []
    while True:
        now = [send_queue(c) for c in clients]
        if now == last and all(q for q in now):
            return
        assert time.monotonic() < deadline, now
        last = now
        time.sleep(0.2)  # the kernel tells no one: polled
