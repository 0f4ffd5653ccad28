"""Raw frames off a websockets connection: the exact bytes and whether it was text.

``Connection.recv()`` decodes text frames and fails the connection (1007) on
invalid UTF-8; ``recv(decode=False)`` keeps the bytes but forgets the opcode. A
recorder needs both and must survive garbage, so the connection's message
assembler is replaced by one that returns ``(is_text, data)`` without decoding.
Everything else (flow control, fragmentation, close handling) stays websockets'.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
from typing import Any, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.messages import Assembler
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConcurrencyError, TooManyFragments
from websockets.frames import CONT, TEXT, CloseCode
from websockets.http11 import Response

try:
    from websockets.asyncio.messages import MAX_FRAGMENTS
except ImportError:  # pragma: no cover - older websockets had no limit
    MAX_FRAGMENTS = 1 << 30


class RawAssembler(Assembler):
    async def get_raw(self) -> tuple[bool, bytes]:
        """Like ``Assembler.get()``, returning the opcode and the undecoded payload."""
        if self.get_in_progress:
            raise ConcurrencyError("get() or get_iter() is already running")
        self.get_in_progress = True
        try:
            frame = await self.frames.get(not self.closed)
            self.maybe_resume()
            parts = [frame]
            while not frame.fin:
                try:
                    frame = await self.frames.get(not self.closed)
                except asyncio.CancelledError:
                    self.frames.put_back(parts)
                    raise
                self.maybe_resume()
                assert frame.opcode is CONT
                if len(parts) >= MAX_FRAGMENTS:
                    raise TooManyFragments(MAX_FRAGMENTS)
                parts.append(frame)
        finally:
            self.get_in_progress = False
        data = parts[0].data if len(parts) == 1 else b"".join(p.data for p in parts)
        return parts[0].opcode is TEXT, bytes(data)

    def get_raw_nowait(self) -> tuple[bool, bytes] | None:
        """A whole single-frame message already received, or None; never waits."""
        queue = self.frames.queue
        if self.get_in_progress or not queue or not queue[0].fin:
            return None
        frame = queue.popleft()
        self.maybe_resume()
        return frame.opcode is TEXT, bytes(frame.data)


class RawFramesMixin:
    """Mixed into websockets' connection classes; adds :meth:`recv_raw`."""

    recv_messages: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        t = cast(asyncio.Transport, transport)
        self.recv_messages = RawAssembler(
            self.max_queue_high,  # type: ignore[attr-defined]
            self.max_queue_low,  # type: ignore[attr-defined]
            pause=t.pause_reading,
            resume=t.resume_reading,
        )

    async def recv_raw(self) -> tuple[bool, bytes]:
        """Next message as ``(is_text, data)``; raises ConnectionClosed at the end."""
        conn = cast(Any, self)
        try:
            return await self.recv_messages.get_raw()  # type: ignore[no-any-return]
        except EOFError:
            pass
        except TooManyFragments as exc:
            conn.set_connection_exc(exc)
            async with conn.send_context():
                conn.protocol.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
        await asyncio.shield(conn.connection_lost_waiter)
        raise conn.close_exc

    def recv_raw_nowait(self) -> tuple[bool, bytes] | None:
        """The next message if it has already arrived whole, else None."""
        return self.recv_messages.get_raw_nowait()  # type: ignore[no-any-return]

    async def send_many(self, messages: list[tuple[bool, bytes]]) -> None:
        """Send messages as they are (text or binary, bytes unchecked) in one write.

        ``send()`` writes each frame to the socket with its own system call, which
        is most of a relay's cost at high rates; framing several and writing once is
        what websockets does inside a single ``send_context``.
        """
        conn = cast(Any, self)
        async with conn.send_context():
            for is_text, data in messages:
                if is_text:
                    conn.protocol.send_text(data)
                else:
                    conn.protocol.send_binary(data)


class RecordingClientConnection(RawFramesMixin, ClientConnection):
    pass


class RecordingServerConnection(RawFramesMixin, ServerConnection):
    pass


def json_response(status: int, obj: object) -> Response:
    """An HTTP response with a JSON body, as daemons answer /health and rejected handshakes."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)
