"""The link's heartbeat: when a daemon that stopped answering is given up on.

websockets' own keepalive is off on the link: on a timeout it starts a closing
handshake that a frozen peer never answers (close_timeout more seconds). Here the
link aborts the transport at once, so a dead daemon is noticed within
interval + timeout. What is sent, and what is done about a dead daemon, is the
link's (:mod:`recorder.capture.link`); when it is dead is decided here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# The longest a pong may wait behind frames still arriving: a 64 MiB frame (the
# largest recorded) at 220 kB/s.
PONG_PATIENCE = 300.0


class Heartbeat:
    """One connection's heartbeat. The receive loop counts the frames it takes
    (:attr:`frames`) and notes when it stops reading to wait for the writer
    (:attr:`waiting_for_writer`); ``heard()`` says when bytes last arrived, on
    time.monotonic()'s clock; :meth:`run` pings and says when the daemon is dead."""

    def __init__(self, interval: float, timeout: float, heard: Callable[[], float]) -> None:
        self.interval = interval
        self.timeout = timeout
        self.heard = heard
        self.frames = 0
        # While the receive loop waits for room in the writer's queue, silence on the
        # socket is ours (we stopped reading), not the daemon's.
        self.waiting_for_writer = False

    async def run(self, ping: Callable[[], Awaitable[asyncio.Future[float]]]) -> str:
        """Ping every interval until the daemon fails to answer; returns why it is
        taken for dead. ``ping`` sends the pings and returns the pong to wait for;
        what it raises (the connection ended, or the daemon stopped reading) ends
        the heartbeat as well."""
        # Pings go out every interval (not interval + timeout), so a freeze just after
        # a pong is still noticed within interval + timeout.
        next_ping = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_ping - time.monotonic()))
            sent = time.monotonic()
            next_ping = sent + self.interval
            pong = await ping()
            reason = await self.alive(pong, sent)
            if reason is not None:
                return reason

    async def alive(self, pong: asyncio.Future[float], sent: float) -> str | None:
        """None while the daemon answers the ping sent at ``sent``; else why it is dead.

        Silence for a timeout is death (a frozen daemon). Bytes arriving are life,
        whole frames or not: the pong may be queued behind a large frame on a slow
        network, and only whole frames counted, so a daemon sending a frame that took
        longer than the timeout was dropped mid-frame, and the frame lost. A daemon
        that sends more whole frames after the first timeout, still without the pong,
        is sending without reading; so is one whose pong is still missing after
        PONG_PATIENCE (a frame trickling in for ever).
        """
        timeout = self.timeout
        await asyncio.wait([pong], timeout=timeout)
        frames, waited = self.frames, timeout
        while not (pong.done() or self.waiting_for_writer):
            if self.heard() < sent:
                return f"nothing received within {timeout:g}s of a ping"
            window = time.monotonic()
            await asyncio.wait([pong], timeout=timeout)
            waited += timeout
            if pong.done() or self.waiting_for_writer:
                break
            if self.heard() < window:
                return f"nothing received within {timeout:g}s, the pong still missing"
            if self.frames - frames >= 2 or waited > PONG_PATIENCE:
                return f"frames arrive but no pong within {waited:g}s of a ping: not reading"
        return None  # answered, or the connection ended (the receive loop says how)
