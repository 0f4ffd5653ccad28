"""The recorder's own connection to the daemon: dial, record, heartbeat, re-dial.

The reconnect schedule is a pure object (:class:`~recorder.capture.backoff.Backoff`);
everything else is the I/O edge. Every frame in either direction goes to the writer as it crosses the
wire; the receive loop awaits the writer's queue, so a full queue stops reading
from the socket instead of dropping frames. Nothing sent to the daemon can hold
the recorder: a send the daemon does not take within ``heartbeat.timeout`` means
it stopped reading, and the connection is dropped and re-dialled.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from recorder.addresses import redact_url
from recorder.capture.backoff import Backoff
from recorder.capture.dial import Dialer, close_within, describe_close
from recorder.capture.handshake import USER_AGENT
from recorder.config import Config
from recorder.pipeline.writer import Writer, WriterError
from recorder.protocol import requests
from recorder.protocol.frames import IN, OUT, FrameTuple
from recorder.times import now_us

log = structlog.get_logger("recorder.link")
T = TypeVar("T")

# How long the link's closing handshake may take at the stop (websockets' close_timeout).
CLOSE_TIMEOUT = 5.0


class LinkGaveUp(Exception):
    """``reconnect.max_attempts`` consecutive attempts failed."""


class Stalled(Exception):
    """A send the daemon did not take in time: it stopped reading, and the connection
    has been dropped."""


class Link:
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
        self.last_rx = 0.0
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
        self._ws: Any = None
        self._local_reason: str | None = None
        self._last_rejection: str | None = None
        self._waiting_for_writer = False

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
            # Heartbeats are ours (see _heartbeat), WebSocket pings included.
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
                delay = self.backoff.next_delay()
                self._failed("unreachable", f"cannot reach the daemon: {_error_text(exc)}")
                log.warning(
                    "cannot reach daemon",
                    url=self.safe_url,
                    error=_error_text(exc),
                    attempt=self.backoff.attempt,
                    retry_in=round(delay, 2),
                )
            else:
                self._last_rejection = None
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
                else:
                    self.attempted.set()
                    started = time.monotonic()
                    await self._record(ws, cid)
                    if time.monotonic() - started >= self.config.reconnect.stable_after:
                        self.backoff.reset()
                    if self._stop.is_set():
                        break
                    delay = self.backoff.next_delay()
                    self.reconnects["disconnected"] = self.reconnects.get("disconnected", 0) + 1
                    log.info("reconnecting", retry_in=round(delay, 2), attempt=self.backoff.attempt)
            if self.backoff.exhausted:
                raise LinkGaveUp(
                    f"gave up on {self.safe_url} after {self.backoff.attempt} attempts "
                    "(reconnect.max_attempts)"
                )
            await self._wait(delay)

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
        self.connection_id = cid
        self.connections += 1
        self._ws = ws
        self._local_reason = None
        self.last_rx = time.monotonic()
        log.info("connected to daemon", url=self.safe_url, connection_id=cid)
        self.state, self.since_us, self.last_error = "connected", now_us(), None
        self.disconnected.clear()
        self.connected.set()
        helpers = [
            asyncio.create_task(self._resync(ws, cid)),
            asyncio.create_task(self._heartbeat(ws, cid)),
            asyncio.create_task(self._close_on_stop(ws)),
        ]
        error: str | None = None
        try:
            await self._receive(ws, cid)
        except Exception as exc:  # a bug here must not stop the recorder
            error = f"receive loop failed: {exc!r}"
            log.exception("receive loop failed", connection_id=cid)
            ws.transport.abort()
        finally:
            self.connected.clear()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        code, reason, closed_by = describe_close(ws, self._local_reason)
        if code == 1009:
            error = self.dialer.too_big
        error = error or self._local_reason
        try:
            await self.writer.close_connection(
                cid, code=code, reason=reason, closed_by=closed_by, error=error
            )
        except WriterError:
            pass  # the writer is gone; the service says what was lost
        level = "info" if self._stop.is_set() or code in (1000, 1001) else "warning"
        getattr(log, level)(
            "daemon connection closed",
            connection_id=cid,
            code=code,
            reason=reason,
            closed_by=closed_by,
            error=error,
        )
        self._ws = None
        self.state, self.since_us = "connecting", now_us()
        if error or code not in (1000, 1001) or not self._stop.is_set():
            self.last_error = f"connection closed: code {code}" + (f", {error}" if error else "")
            self.last_error_us = self.since_us
        self.disconnected.set()

    async def _receive(self, ws: Any, cid: int) -> None:
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
            self.last_rx = mono / 1e9  # time.monotonic()'s clock
            frame = (cid, next(seq), IN, now_us(), mono, is_text, data)
            if offer(frame):
                continue  # the common case, without a coroutine
            # No room: stop reading until the writer catches up. Silence on the socket
            # from now on is ours, not the daemon's (see _heartbeat).
            self._waiting_for_writer = True
            await put(frame)
            self._waiting_for_writer = False

    async def request(self, text: str) -> bool:
        """Send a request to the daemon now, recorded like any frame; False when it
        could not be sent: the link is down, the writer's queue stayed full for
        :attr:`send_timeout`, or the daemon did not take it within that time (then the
        connection is dropped and re-dialled). Nothing is queued for later: the caller
        decides what then. Returns within twice :attr:`send_timeout`."""
        ws, cid = self._ws, self.connection_id
        if ws is None or cid is None or not self.connected.is_set():
            return False
        writer = self.writer
        try:
            # Room first: once sent, a frame must be recorded without waiting.
            async with asyncio.timeout(self.send_timeout):
                await writer.room()
        except TimeoutError:
            log.warning("request not sent: the writer's queue stayed full", connection_id=cid)
            return False
        try:
            await self.send(ws, cid, text, record=writer.push)
        except (ConnectionClosed, Stalled):
            return False
        return True

    async def send(
        self, ws: Any, cid: int, text: str, *, record: Callable[[FrameTuple], None] | None = None
    ) -> None:
        """Send a text frame and record it once it is on its way (``record``: how it
        is handed to the writer; by default :meth:`Writer.put`, which waits for room).
        Raises :class:`Stalled` when the daemon does not take it within
        :attr:`send_timeout` (then it never reached the daemon whole: not recorded)."""
        received_us, mono = now_us(), time.monotonic_ns()
        await self._within(ws, ws.send(text))
        if ws.state is State.CLOSED:
            # The connection was lost while the frame waited in our buffer (websockets
            # then ends the wait without an error): it never left.
            raise ws.protocol.close_exc
        frame = (cid, next(self._seq), OUT, received_us, mono, True, text.encode())
        if record is not None:
            record(frame)
        elif not self.writer.offer(frame):
            await self.writer.put(frame)

    async def _within(self, ws: Any, sending: Awaitable[T]) -> T:
        """``sending``, bounded: websockets waits without limit for a peer that does not
        read. A send that cannot complete drops the connection (the receive loop
        then records how it ended, and the link re-dials)."""
        try:
            async with asyncio.timeout(self.send_timeout):
                return await sending
        except TimeoutError:
            if self._local_reason is None:
                self._local_reason = (
                    f"send timeout: the daemon read nothing for {self.send_timeout:g}s"
                )
                log.warning(
                    "daemon is not reading; dropping the connection",
                    connection_id=self.connection_id,
                    timeout=self.send_timeout,
                )
            ws.transport.abort()
            raise Stalled(self._local_reason) from None

    async def _resync(self, ws: Any, cid: int) -> None:
        """Ask for everything we may have missed while disconnected."""
        try:
            await self.send(ws, cid, requests.DAEMON_STATUS)
            await self.send(ws, cid, requests.LIST_SESSIONS)
            for session_id in await self.writer.active_session_ids():
                await self.send(ws, cid, requests.session_status(session_id))
        except (ConnectionClosed, Stalled):
            pass

    async def _heartbeat(self, ws: Any, cid: int) -> None:
        """Every interval: a WebSocket ping and a protocol ping, then :meth:`_alive`.

        websockets' own keepalive is off: on a timeout it starts a closing handshake
        that a frozen peer never answers (close_timeout more seconds). Here the
        transport is aborted at once, so a dead daemon is noticed within
        interval + timeout. A ping that cannot even be sent (the daemon stopped
        reading) drops the connection as well (:meth:`_within`).
        """
        hb = self.config.heartbeat
        # Pings go out every interval (not interval + timeout), so a freeze just after
        # a pong is still noticed within interval + timeout.
        next_ping = time.monotonic() + hb.interval
        while True:
            await asyncio.sleep(max(0.0, next_ping - time.monotonic()))
            sent = time.monotonic()
            next_ping = sent + hb.interval
            try:
                pong = await self._within(ws, ws.ping())
                await self.send(ws, cid, requests.PING)
            except (ConnectionClosed, Stalled):
                return
            reason = await self._alive(pong, sent)
            if reason is None:
                continue
            self._local_reason = self._local_reason or f"heartbeat timeout: {reason}"
            log.warning(
                "daemon is not answering; dropping the connection",
                connection_id=cid,
                timeout=hb.timeout,
                reason=reason,
            )
            ws.transport.abort()
            return

    async def _alive(self, pong: asyncio.Future[float], sent: float) -> str | None:
        """None while the daemon answers the ping sent at ``sent``; else why it is dead.

        Silence for a timeout is death (a frozen daemon). Frames arriving without the
        pong get one more timeout (the pong may be queued behind them); after that the
        daemon is sending without reading. While the receive loop waits for room in
        the writer's queue, silence is ours (we stopped reading), not the daemon's.
        """
        timeout = self.config.heartbeat.timeout
        await asyncio.wait([pong], timeout=timeout)
        if pong.done() or self._waiting_for_writer:
            return None  # answered, or the connection ended (the receive loop says how)
        if self.last_rx < sent:
            return f"nothing received within {timeout:g}s of a ping"
        await asyncio.wait([pong], timeout=timeout)
        if pong.done() or self._waiting_for_writer:
            return None
        return f"frames arrive but no pong within {2 * timeout:g}s of a ping: not reading"

    async def _close_on_stop(self, ws: Any) -> None:
        await self._stop.wait()
        # A clean close handshake: frames the daemon sent before its close frame are
        # still received and recorded by the receive loop. Bounded: a daemon that
        # does not read would otherwise hold the stop.
        if not await close_within(ws, 1001, "recorder shutting down", CLOSE_TIMEOUT):
            self._local_reason = self._local_reason or "stopped without a closing handshake"


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
