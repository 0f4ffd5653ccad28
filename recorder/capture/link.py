"""The recorder's own connection to the daemon: dial, record, heartbeat, re-dial.

The reconnect schedule is a pure object (:class:`~recorder.capture.backoff.Backoff`);
everything else is the I/O edge. Here: dialling, the wait between attempts, what
the service reports of the link, and requests sent on the service's behalf. Each
connection, once open, is a :class:`~recorder.capture.link_connection.LinkConnection`
(received, resynced, heartbeaten, its sends bounded); it ends, is written down,
and is dialled again.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import structlog
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from recorder.addresses import redact_url
from recorder.capture.backoff import Backoff
from recorder.capture.dial import Dialer, close_within, describe_close
from recorder.capture.handshake import USER_AGENT
from recorder.capture.link_connection import CLOSE_TIMEOUT, LinkConnection, Stalled
from recorder.config import Config
from recorder.pipeline.writer import Writer, WriterError
from recorder.times import now_us

log = structlog.get_logger("recorder.link")


class LinkGaveUp(Exception):
    """``reconnect.max_attempts`` consecutive attempts failed."""


class Link:
    """The link: one connection to the daemon at a time, dialled again whenever it ends."""

    def __init__(self, config: Config, writer: Writer, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.writer = writer
        self.dialer = Dialer(config.daemon)
        self.safe_url = redact_url(self.dialer.url)
        r = config.reconnect
        self.backoff = Backoff(r.base, r.factor, r.cap, r.max_attempts, rng or random.Random())
        self.connected = asyncio.Event()
        # Set whenever a connection has ended (and been written down); cleared on connect.
        self.disconnected = asyncio.Event()
        self.connections = 0
        self.connection_id: int | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        # What the service reports (status, sd_notify, metrics): connecting, connected,
        # waiting; since when; the last failure; when the next attempt is due.
        self.state = "connecting"
        self.since_us: int | None = None
        self.last_error: str | None = None
        self.last_error_us: int | None = None
        self.retry_at_us: int | None = None
        self.reconnects: dict[str, int] = {}
        # Set once the first attempt to connect has ended, however it ended.
        self.attempted = asyncio.Event()
        self._seq = itertools.count(1)
        # The connection under way, and its websocket (None between connections).
        self._conn: LinkConnection | None = None
        self._ws: Any = None
        self._last_rejection: str | None = None

    @property
    def send_timeout(self) -> float:
        """A send waits at most this long (the heartbeat's timeout, after which silence
        is death anyway); longer, and the daemon has stopped reading."""
        return self.config.heartbeat.timeout

    def stop(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        """End the connection now, without a handshake (a stop that ran out of time)."""
        if self._ws is not None:
            self._ws.transport.abort()

    # --- dialing -----------------------------------------------------------------

    def _dial_options(self) -> dict[str, Any]:
        return {
            "additional_headers": self.dialer.add_credentials(Headers()),
            "user_agent_header": USER_AGENT,
            # Heartbeats are ours (LinkConnection.heartbeat), WebSocket pings included.
            "ping_interval": None,
            "close_timeout": CLOSE_TIMEOUT,
        }

    async def run(self) -> None:
        """Connect, record until the connection ends, wait, repeat; until :meth:`stop`."""
        options = self._dial_options()
        while not self._stop.is_set():
            self.state = "connecting"
            try:
                ws = await self.dialer.dial(**options)
            except InvalidStatus as exc:
                delay = self._rejected(exc)
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                delay = self._unreachable(exc)
            else:
                self._last_rejection = None
                connected = await self._connected(ws)
                if connected is None:
                    break
                delay = connected
            if self.backoff.exhausted:
                raise LinkGaveUp(
                    f"gave up on {self.safe_url} after {self.backoff.attempt} attempts "
                    "(reconnect.max_attempts)"
                )
            await self._wait(delay)

    async def _connected(self, ws: Any) -> float | None:
        """Record what a dial opened until it ends. Returns how long to wait before
        the next dial; None when the link was stopped."""
        try:
            cid = await self.writer.open_connection("link", self.safe_url)
        except WriterError as exc:
            # Nothing can be recorded on it: hang up, and try again later, as
            # after any failed attempt (the service stops if the writer died).
            await close_within(ws, 1011, "recorder cannot record", CLOSE_TIMEOUT)
            delay = self.backoff.next_delay()
            self._failed("writer", f"cannot record the connection: {exc}")
            log.warning(
                "cannot record the daemon connection; hanging up",
                url=self.safe_url,
                error=str(exc),
                attempt=self.backoff.attempt,
                retry_in=round(delay, 2),
            )
            return delay
        self.attempted.set()
        started = time.monotonic()
        await self._record(ws, cid)
        if time.monotonic() - started >= self.config.reconnect.stable_after:
            self.backoff.reset()
        if self._stop.is_set():
            return None
        delay = self.backoff.next_delay()
        self.reconnects["disconnected"] = self.reconnects.get("disconnected", 0) + 1
        log.info("reconnecting", retry_in=round(delay, 2), attempt=self.backoff.attempt)
        return delay

    def _unreachable(self, exc: BaseException) -> float:
        """A dial that reached no daemon: noted, and the backoff's next delay."""
        delay = self.backoff.next_delay()
        self._failed("unreachable", f"cannot reach the daemon: {_error_text(exc)}")
        log.warning(
            "cannot reach daemon",
            url=self.safe_url,
            error=_error_text(exc),
            attempt=self.backoff.attempt,
            retry_in=round(delay, 2),
        )
        return delay

    def _failed(self, reason: str, error: str | None) -> None:
        self.attempted.set()
        self.reconnects[reason] = self.reconnects.get(reason, 0) + 1
        self.last_error = error
        self.last_error_us = now_us()

    async def _wait(self, delay: float) -> None:
        """Until the next attempt is due, the link stops, or :meth:`wake` is called."""
        self.state = "waiting"
        self.retry_at_us = now_us() + int(delay * 1e6)
        self._wake.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._wake)]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self.retry_at_us = None

    def wake(self) -> None:
        """The daemon is back (the proxy just reached it): dial now, not at the backoff's
        time. A recorder must not sleep through the daemon's return."""
        if self.state == "waiting":
            log.info("daemon reachable again; dialling now", url=self.safe_url)
            self._wake.set()

    def _rejected(self, exc: InvalidStatus) -> float:
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace")[:300] if exc.response.body else ""
        reason = f"HTTP {status} {body}".strip()
        self._failed("rejected", f"the daemon rejected the handshake: {reason}")
        if status in (401, 403):
            delay = self.backoff.capped_delay()
            # Credentials won't fix themselves: say it once, then retry slowly and quietly.
            if reason != self._last_rejection:
                log.error(
                    "daemon rejected the handshake",
                    url=self.safe_url,
                    status=status,
                    body=body,
                    retry_every=delay,
                )
            self._last_rejection = reason
            return delay
        delay = self.backoff.next_delay()
        log.warning(
            "daemon refused the connection",
            url=self.safe_url,
            status=status,
            body=body,
            retry_in=round(delay, 2),
        )
        return delay

    # --- one connection -----------------------------------------------------------

    async def _record(self, ws: Any, cid: int) -> None:
        """One connection, from its row to its end: received, resynced, heartbeaten."""
        conn = self._conn = LinkConnection(ws, cid, self.writer, self._seq, self.config.heartbeat)
        self.connection_id = cid
        self.connections += 1
        self._ws = ws
        log.info("connected to daemon", url=self.safe_url, connection_id=cid)
        self.state, self.since_us, self.last_error = "connected", now_us(), None
        self.disconnected.clear()
        self.connected.set()
        helpers = [
            asyncio.create_task(conn.resync()),
            asyncio.create_task(conn.heartbeat()),
            asyncio.create_task(conn.close_on(self._stop)),
        ]
        error: str | None = None
        try:
            await conn.receive()
        except Exception as exc:  # a bug here must not stop the recorder
            error = f"receive loop failed: {exc!r}"
            log.exception("receive loop failed", connection_id=cid)
            ws.transport.abort()
        finally:
            self.connected.clear()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        await self._ended(conn, error)

    async def _ended(self, conn: LinkConnection, error: str | None) -> None:
        """Write down and report how a connection ended (``error``: the receive loop's
        own failure, if any)."""
        code, reason, closed_by = describe_close(conn.ws, conn.local_reason)
        if code == 1009:
            error = self.dialer.too_big
        error = error or conn.local_reason
        try:
            await self.writer.close_connection(
                conn.cid, code=code, reason=reason, closed_by=closed_by, error=error
            )
        except WriterError:
            pass  # the writer is gone; the service says what was lost
        level = "info" if self._stop.is_set() or code in (1000, 1001) else "warning"
        getattr(log, level)(
            "daemon connection closed",
            connection_id=conn.cid,
            code=code,
            reason=reason,
            closed_by=closed_by,
            error=error,
        )
        self._conn = self._ws = None
        self.state, self.since_us = "connecting", now_us()
        if error or code not in (1000, 1001) or not self._stop.is_set():
            self.last_error = f"connection closed: code {code}" + (f", {error}" if error else "")
            self.last_error_us = self.since_us
        self.disconnected.set()

    async def request(self, text: str) -> bool:
        """Send a request to the daemon now, recorded like any frame; False when it
        could not be sent: the link is down, the writer's queue stayed full for
        :attr:`send_timeout`, or the daemon did not take it within that time (then the
        connection is dropped and re-dialled). Nothing is queued for later: the caller
        decides what then. Returns within twice :attr:`send_timeout`."""
        conn = self._conn
        if conn is None or not self.connected.is_set():
            return False
        writer = self.writer
        try:
            # Room first: once sent, a frame must be recorded without waiting.
            async with asyncio.timeout(self.send_timeout):
                await writer.room()
        except TimeoutError:
            log.warning("request not sent: the writer's queue stayed full", connection_id=conn.cid)
            return False
        try:
            await conn.send(text, record=writer.push)
        except (ConnectionClosed, Stalled):
            return False
        return True


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
