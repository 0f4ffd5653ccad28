"""One connection of the link to the daemon, from its first frame to its end.

The link (:mod:`recorder.capture.link`) dials, keeps the reconnect schedule and
reports how it stands; each connection it opens is a :class:`LinkConnection`.
Every frame in either direction goes to the writer as it crosses the wire; the
receive loop awaits the writer's queue, so a full queue stops reading from the
socket instead of dropping frames. Nothing sent to the daemon can hold the
recorder: a send the daemon does not take within ``heartbeat.timeout`` means it
stopped reading, and the connection is dropped (the link then re-dials).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import structlog
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from recorder.capture.dial import close_within
from recorder.capture.heartbeat import Heartbeat
from recorder.config import HeartbeatConfig
from recorder.pipeline.writer import Writer
from recorder.protocol import requests
from recorder.protocol.frames import IN, OUT, FrameTuple
from recorder.times import now_us

log = structlog.get_logger("recorder.link")
T = TypeVar("T")

# How long the link's closing handshake may take at the stop (websockets' close_timeout).
CLOSE_TIMEOUT = 5.0


class Stalled(Exception):
    """A send the daemon did not take in time: it stopped reading, and the connection
    has been dropped."""


class LinkConnection:
    """An open connection ``ws``, recorded as connection ``cid``; ``seq`` numbers its
    frames (the link's own, shared by all its connections)."""

    def __init__(
        self, ws: Any, cid: int, writer: Writer, seq: Iterator[int], heartbeat: HeartbeatConfig
    ) -> None:
        self.ws = ws
        self.cid = cid
        self.writer = writer
        self._seq = seq
        self.beat = Heartbeat(heartbeat.interval, heartbeat.timeout, lambda: ws.last_data)
        # A send waits at most this long (the heartbeat's timeout, after which silence
        # is death anyway); longer, and the daemon has stopped reading.
        self.send_timeout = heartbeat.timeout
        # Why the recorder ended the connection itself (a stalled send, the heartbeat,
        # a stop without a closing handshake); None while the peer or the network did.
        self.local_reason: str | None = None

    async def receive(self) -> None:
        """Record every frame received, until the connection is closed."""
        ws, cid, beat = self.ws, self.cid, self.beat
        recv, recv_nowait = ws.recv_raw, ws.recv_raw_nowait
        offer, put = self.writer.offer, self.writer.put
        seq = self._seq
        while True:
            # Messages that have already arrived, without a coroutine each.
            message = recv_nowait()
            if message is None:
                try:
                    message = await recv()
                except ConnectionClosed:
                    return
            is_text, data = message
            mono = time.monotonic_ns()
            beat.frames += 1
            frame = (cid, next(seq), IN, now_us(), mono, is_text, data)
            if offer(frame):
                continue  # the common case, without a coroutine
            # No room: stop reading until the writer catches up. Silence on the socket
            # from now on is ours, not the daemon's (see Heartbeat.alive).
            beat.waiting_for_writer = True
            await put(frame)
            beat.waiting_for_writer = False

    async def send(self, text: str, *, record: Callable[[FrameTuple], None] | None = None) -> None:
        """Send a text frame and record it once it is on its way (``record``: how it
        is handed to the writer; by default :meth:`Writer.put`, which waits for room).
        Raises :class:`Stalled` when the daemon does not take it within
        :attr:`send_timeout` (then it never reached the daemon whole: not recorded)."""
        ws = self.ws
        await self._within(ws.send(text))
        if ws.state is State.CLOSED:
            # The connection was lost while the frame waited in our buffer (websockets
            # then ends the wait without an error): it never left.
            raise ws.protocol.close_exc
        # Stamped as it is handed over, not before a send that may wait: frames take
        # their ids in the order of their times, which `frames --since` relies on.
        now, mono = now_us(), time.monotonic_ns()
        frame = (self.cid, next(self._seq), OUT, now, mono, True, text.encode())
        if record is not None:
            record(frame)
        elif not self.writer.offer(frame):
            await self.writer.put(frame)

    async def _within(self, sending: Awaitable[T]) -> T:
        """``sending``, bounded: websockets waits without limit for a peer that does not
        read. A send that cannot complete drops the connection (the receive loop
        then records how it ended, and the link re-dials)."""
        try:
            async with asyncio.timeout(self.send_timeout):
                return await sending
        except TimeoutError:
            if self.local_reason is None:
                self.local_reason = (
                    f"send timeout: the daemon read nothing for {self.send_timeout:g}s"
                )
                log.warning(
                    "daemon is not reading; dropping the connection",
                    connection_id=self.cid,
                    timeout=self.send_timeout,
                )
            self.ws.transport.abort()
            raise Stalled(self.local_reason) from None

    async def resync(self) -> None:
        """Ask for everything we may have missed while disconnected."""
        try:
            await self.send(requests.DAEMON_STATUS)
            await self.send(requests.LIST_SESSIONS)
            for session_id in await self.writer.active_session_ids():
                await self.send(requests.session_status(session_id))
        except (ConnectionClosed, Stalled):
            pass

    async def heartbeat(self) -> None:
        """Every interval a WebSocket ping and a protocol ping; the transport aborted
        once the daemon stops answering (:class:`~recorder.capture.heartbeat.Heartbeat`).
        A ping that cannot even be sent (the daemon stopped reading) drops the
        connection as well (:meth:`_within`)."""

        async def ping() -> asyncio.Future[float]:
            pong: asyncio.Future[float] = await self._within(self.ws.ping())
            await self.send(requests.PING)
            return pong

        try:
            reason = await self.beat.run(ping)
        except (ConnectionClosed, Stalled):
            return
        self.local_reason = self.local_reason or f"heartbeat timeout: {reason}"
        log.warning(
            "daemon is not answering; dropping the connection",
            connection_id=self.cid,
            timeout=self.beat.timeout,
            reason=reason,
        )
        self.ws.transport.abort()

    async def close_on(self, stop: asyncio.Event) -> None:
        """Close the connection once ``stop`` is set (the link is stopping)."""
        await stop.wait()
        # A clean close handshake: frames the daemon sent before its close frame are
        # still received and recorded by the receive loop. Bounded: a daemon that
        # does not read would otherwise hold the stop.
        if not await close_within(self.ws, 1001, "recorder shutting down", CLOSE_TIMEOUT):
            self.local_reason = self.local_reason or "stopped without a closing handshake"
