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


class Heartbeat:
    """One connection's heartbeat. The receive loop notes when a frame last arrived
    (:attr:`last_rx`) and when it stops reading to wait for the writer
    (:attr:`waiting_for_writer`); :meth:`run` pings and says when the daemon is dead."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        # When the last frame arrived, on time.monotonic()'s clock.
        self.last_rx = time.monotonic()
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

        Silence for a timeout is death (a frozen daemon). Frames arriving without the
        pong get one more timeout (the pong may be queued behind them); after that the
        daemon is sending without reading.
        """
        timeout = self.timeout
        await asyncio.wait([pong], timeout=timeout)
        if pong.done() or self.waiting_for_writer:
            return None  # answered, or the connection ended (the receive loop says how)
        if self.last_rx < sent:
            return f"nothing received within {timeout:g}s of a ping"
        await asyncio.wait([pong], timeout=timeout)
        if pong.done() or self.waiting_for_writer:
            return None
        return f"frames arrive but no pong within {2 * timeout:g}s of a ping: not reading"
