"""The proxy port's limit on TCP connections, counted from accept to end.

A connection past the limit is aborted in ``connection_made``, before any byte of
it is read, so a crowd of idle sockets costs one descriptor each for an instant.
"""

from __future__ import annotations

import asyncio
from typing import cast

from recorder.capture.wire import RecordingServerConnection

# TCP connections on the port beyond max_clients: handshakes under way, /health and
# /metrics. Past that a new one is closed at once: connections that never finish a
# handshake (each held open_timeout) took every file descriptor, and the link could
# not dial the daemon.
MAX_UNADMITTED = 64


class Sockets:
    """How many TCP connections the port holds, against a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


class PortConnection(RecordingServerConnection):
    """A connection on the proxy's port, counted from its accept to its end."""

    sockets: Sockets
    counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.sockets.open >= self.sockets.limit:
            cast(asyncio.Transport, transport).abort()  # before any byte is read
            return
        self.sockets.open += 1
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.sockets.open -= 1
            self.counted = False
        super().connection_lost(exc)
