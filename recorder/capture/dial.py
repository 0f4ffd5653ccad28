"""One way to dial the daemon, shared by the link and the proxy.

Both open recording connections with the same frame-size limit, timeout, TLS
context and credentials, and describe how a connection ended in the same words.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from websockets.asyncio.client import connect
from websockets.datastructures import Headers

from recorder.capture.wire import RecordingClientConnection
from recorder.config import DaemonConfig


class Dialer:
    """Dials the daemon with the configured limits, TLS and (where asked) credentials."""

    def __init__(self, daemon: DaemonConfig, url: str | None = None) -> None:
        self.daemon = daemon
        self.url = url or daemon.url
        self.ssl: ssl.SSLContext | None = None
        if self.url.startswith("wss://"):
            # The system's trust store, plus ca_file when given. Without a context
            # websockets refused every wss:// URL ("ssl=None is incompatible").
            self.ssl = ssl.create_default_context(cafile=daemon.ca_file or None)

    @property
    def too_big(self) -> str:
        """The error recorded when a frame over the limit ended a connection (1009)."""
        return f"frame larger than daemon.max_frame_bytes ({self.daemon.max_frame_bytes} bytes)"

    def add_credentials(self, headers: Headers) -> Headers:
        """``headers`` with the recorder's own token and API key in place of any given."""
        for name in ("Authorization", "x-api-key"):
            if name in headers:
                del headers[name]
        if self.daemon.token:
            headers["Authorization"] = f"Bearer {self.daemon.token}"
        if self.daemon.api_key:
            headers["x-api-key"] = self.daemon.api_key
        return headers

    async def dial(self, url: str | None = None, **options: Any) -> Any:
        """A :class:`RecordingClientConnection` to ``url`` (default: the daemon's).

        ``options`` are websockets' ``connect()`` arguments for this caller
        (headers, user agent, keepalive, compression, subprotocols).
        """
        return await connect(
            url or self.url,
            create_connection=RecordingClientConnection,
            max_size=self.daemon.max_frame_bytes,
            open_timeout=self.daemon.open_timeout,
            ssl=self.ssl,
            **options,
        )


def describe_close(ws: Any, local_reason: str | None) -> tuple[int | None, str | None, str]:
    """(code, reason, who closed: "remote" or "local") for a connection that ended."""
    proto = ws.protocol
    rcvd, sent = proto.close_rcvd, proto.close_sent
    if rcvd is not None and (sent is None or proto.close_rcvd_then_sent):
        return rcvd.code, rcvd.reason, "remote"
    if sent is not None:
        return sent.code, sent.reason, "local"
    return 1006, None, "local" if local_reason else "remote"


def not_reading(ws: Any) -> bool:
    """The peer has stopped taking what is sent: more is waiting in our write buffer
    than its high-water mark (websockets waits, unbounded, for it to go below)."""
    transport = ws.transport
    return bool(transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1])


async def close_within(ws: Any, code: int, reason: str, seconds: float) -> bool:
    """A closing handshake that ends within ``seconds``, however the peer behaves;
    True if it was one, False if the transport had to be aborted.

    websockets' ``close()`` first waits, without limit, for the write buffer to drain:
    a peer that does not read held it for ever. Past ``seconds`` the transport is
    aborted; with a peer that is not reading, at once (its close frame would wait
    behind everything it has not read).
    """
    if not_reading(ws) or seconds <= 0:
        ws.transport.abort()
        return False
    try:
        async with asyncio.timeout(seconds):
            await ws.close(code, reason)
    except TimeoutError:
        ws.transport.abort()
        return False
    return True
