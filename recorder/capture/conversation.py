"""One UI's conversation through the proxy: relayed both ways, recorded, written down.

The proxy (:mod:`recorder.capture.proxy`) admits a client and dials the daemon for
it; from the moment both sides are open, a :class:`Conversation` relays each side's
frames to the other, hands every frame to the writer, and once either side has
gone, closes the other and writes down who ended it, with which code, and why.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from recorder.capture.admission import relay_close
from recorder.capture.dial import close_within
from recorder.pipeline.writer import Writer, WriterError
from recorder.protocol.frames import IN, OUT
from recorder.times import now_us

log = structlog.get_logger("recorder.proxy")

# At most this many already-received frames are relayed in one socket write.
RELAY_BATCH = 64
# A closing handshake with either side takes at most this long (websockets' own
# wait is unbounded for a peer that does not read).
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Ending:
    """How a conversation ended, as its connection row says it."""

    closed_by: str  # "client", "upstream" or "recorder"
    code: int
    reason: str | None
    error: str | None


class Conversation:
    """A client and its upstream connection, both open, recorded as connection ``cid``."""

    def __init__(
        self, writer: Writer, cid: int, client: ServerConnection, upstream: Any, too_big: str
    ) -> None:
        self.writer = writer
        self.cid = cid
        self.client = client
        self.upstream = upstream
        # What the row says of a frame over max_frame_bytes (the dialer's words).
        self.too_big = too_big
        # Frames of both directions share one sequence: the order they were seen in.
        self._seq = itertools.count(1)
        # The side that went first ("client" or "upstream"); the other is then closed.
        self._first: str | None = None

    async def relay(self) -> str | None:
        """Relay both ways until both sides are closed. Returns an error only when the
        relay itself failed (both sides are aborted then); how the peers ended it is
        for :meth:`ending`."""
        try:
            await asyncio.gather(
                self._pump(self.client, self.upstream, OUT, "client"),
                self._pump(self.upstream, self.client, IN, "upstream"),
            )
        except Exception as exc:  # a bug here must not take the service down
            log.exception("proxy conversation failed", connection_id=self.cid)
            self.client.transport.abort()
            self.upstream.transport.abort()
            self._first = self._first or "recorder"
            return f"proxy failed: {exc!r}"
        return None

    async def _pump(self, src: Any, dst: Any, direction: str, side: str) -> None:
        """One direction: each frame handed to the writer as it is stamped, then
        forwarded. Handed over first so that frames take their ids in the order they
        were received (a slow reader on the other side held them back for as long as
        it was slow, and `frames --since` looked for them by id); forwarding waits for
        the database only while the writer's queue is full."""
        # Locals, not attributes: this loop runs once per frame.
        cid, seq = self.cid, self._seq
        offer, put = self.writer.offer, self.writer.put
        recv, recv_nowait = src.recv_raw, src.recv_raw_nowait
        try:
            while True:
                is_text, data = await recv()
                batch = [(is_text, data)]
                frame = (cid, next(seq), direction, now_us(), time.monotonic_ns(), is_text, data)
                if not offer(frame):
                    await put(frame)  # back-pressure: stop reading
                # Whatever else has already arrived goes out in the same write.
                while len(batch) < RELAY_BATCH and (more := recv_nowait()) is not None:
                    batch.append(more)
                    frame = (cid, next(seq), direction, now_us(), time.monotonic_ns(), *more)
                    if not offer(frame):
                        await put(frame)
                await dst.send_many(batch)
        except ConnectionClosed:
            pass
        if self._first is None:
            self._first = side
        code, reason = relay_close(src.protocol.close_rcvd, f"{side} connection lost")
        await close_within(dst, code, reason, CLOSE_TIMEOUT)

    def ending(self, error: str | None) -> Ending:
        """Who closed the conversation, with which close frame; ``error`` is what
        :meth:`relay` returned."""
        closer = self._first or "recorder"
        ws = self.client if closer == "client" else self.upstream
        close: Close | None = ws.protocol.close_rcvd if closer != "recorder" else None
        sent: Close | None = ws.protocol.close_sent
        if close is None and closer != "recorder" and sent is not None:
            # We ended that side ourselves (websockets failed it): say so, and why.
            close, closer = sent, "recorder"
            if sent.code == 1009:
                error = error or self.too_big
        code = close.code if close is not None else 1006
        reason = close.reason if close is not None else None
        if close is None and error is None:
            error = f"{closer} connection lost"
        return Ending(closer, code, reason, error)

    async def write_down(self, error: str | None) -> None:
        """Close the conversation's row: how it ended (:meth:`ending`)."""
        end = self.ending(error)
        try:
            await self.writer.close_connection(
                self.cid, code=end.code, reason=end.reason, closed_by=end.closed_by, error=end.error
            )
        except WriterError:
            pass  # the writer is gone; the service says what was lost
        log.info(
            "proxy client disconnected",
            connection_id=self.cid,
            closed_by=end.closed_by,
            code=end.code,
            reason=end.reason,
        )
