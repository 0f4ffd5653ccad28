"""The recorder's own connection to the daemon: dial, record, heartbeat, re-dial.

The reconnect schedule is a pure object (:class:`Backoff`); everything else is the
I/O edge. Every frame in either direction goes to the writer as it crosses the
wire; the receive loop awaits the writer's queue, so a full queue stops reading
from the socket instead of dropping frames.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from recorder import __version__
from recorder.config import Config, redact_url
from recorder.protocol import IN, OUT
from recorder.wire import RecordingClientConnection
from recorder.writer import Writer

log = structlog.get_logger("recorder.link")

USER_AGENT = f"orchestrator-recorder/{__version__}"
PING = '{"type":"ping"}'


class LinkGaveUp(Exception):
    """``reconnect.max_attempts`` consecutive attempts failed."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter: delay = uniform(0, min(cap, base * factor**n))."""

    base: float
    factor: float
    cap: float
    max_attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def ceiling(self) -> float:
        # Bound the exponent so factor**attempt cannot overflow after days of failures.
        return min(self.cap, self.base * self.factor ** min(self.attempt, 64))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def capped_delay(self) -> float:
        """For rejections that won't fix themselves soon (401/403): wait the full cap."""
        self.attempt += 1
        return self.cap

    def reset(self) -> None:
        self.attempt = 0

    @property
    def exhausted(self) -> bool:
        return self.max_attempts > 0 and self.attempt >= self.max_attempts


def describe_close(ws: Any, local_reason: str | None) -> tuple[int | None, str | None, str]:
    """(code, reason, who closed) for the connection row."""
    proto = ws.protocol
    rcvd, sent = proto.close_rcvd, proto.close_sent
    if rcvd is not None and (sent is None or proto.close_rcvd_then_sent):
        return rcvd.code, rcvd.reason, "remote"
    if sent is not None:
        return sent.code, sent.reason, "local"
    return 1006, None, "local" if local_reason else "remote"


def session_status_request(session_id: str) -> str:
    return json.dumps(
        {"type": "session_status", "payload": {"sessionId": session_id}}, separators=(",", ":")
    )


class Link:
    def __init__(self, config: Config, writer: Writer, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.writer = writer
        d = config.daemon
        self.url = d.url
        self.safe_url = redact_url(d.url)
        r = config.reconnect
        self.backoff = Backoff(r.base, r.factor, r.cap, r.max_attempts, rng or random.Random())
        self.connected = asyncio.Event()
        # Set whenever a connection has ended (and been written down); cleared on connect.
        self.disconnected = asyncio.Event()
        self.connections = 0
        self.connection_id: int | None = None
        self.last_rx = 0.0
        self._stop = asyncio.Event()
        self._seq = itertools.count(1)
        self._ws: Any = None
        self._local_reason: str | None = None
        self._last_rejection: str | None = None
        self._waiting_for_writer = False

    def stop(self) -> None:
        self._stop.set()

    # --- dialing -----------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        d = self.config.daemon
        headers = {}
        if d.token:
            headers["Authorization"] = f"Bearer {d.token}"
        if d.api_key:
            headers["x-api-key"] = d.api_key
        kwargs: dict[str, Any] = {
            "additional_headers": headers,
            "user_agent_header": USER_AGENT,
            "max_size": d.max_frame_bytes,
            "open_timeout": d.open_timeout,
            # Heartbeats are ours (see _heartbeat), WebSocket pings included.
            "ping_interval": None,
            "close_timeout": 5,
            "create_connection": RecordingClientConnection,
        }
        if self.url.startswith("wss://") and d.ca_file:
            kwargs["ssl"] = ssl.create_default_context(cafile=d.ca_file)
        return kwargs

    async def run(self) -> None:
        """Connect, record until the connection ends, wait, repeat; until :meth:`stop`."""
        kwargs = self._connect_kwargs()
        while not self._stop.is_set():
            try:
                ws = await connect(self.url, **kwargs)
            except InvalidStatus as exc:
                delay = self._rejected(exc)
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                delay = self.backoff.next_delay()
                log.warning(
                    "cannot reach daemon",
                    url=self.safe_url,
                    error=_error_text(exc),
                    attempt=self.backoff.attempt,
                    retry_in=round(delay, 2),
                )
            else:
                self._last_rejection = None
                started = time.monotonic()
                await self._record(ws)
                if time.monotonic() - started >= self.config.reconnect.stable_after:
                    self.backoff.reset()
                if self._stop.is_set():
                    break
                delay = self.backoff.next_delay()
                log.info("reconnecting", retry_in=round(delay, 2), attempt=self.backoff.attempt)
            if self.backoff.exhausted:
                raise LinkGaveUp(
                    f"gave up on {self.safe_url} after {self.backoff.attempt} attempts "
                    "(reconnect.max_attempts)"
                )
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass

    def _rejected(self, exc: InvalidStatus) -> float:
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace")[:300] if exc.response.body else ""
        reason = f"HTTP {status} {body}".strip()
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

    async def _record(self, ws: Any) -> None:
        cid = await self.writer.open_connection("link", self.safe_url)
        self.connection_id = cid
        self.connections += 1
        self._ws = ws
        self._local_reason = None
        self.last_rx = time.monotonic()
        log.info("connected to daemon", url=self.safe_url, connection_id=cid)
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
            error = f"frame larger than daemon.max_frame_bytes ({self.config.daemon.max_frame_bytes} bytes)"
        error = error or self._local_reason
        await self.writer.close_connection(
            cid, code=code, reason=reason, closed_by=closed_by, error=error
        )
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
        self.disconnected.set()

    async def _receive(self, ws: Any, cid: int) -> None:
        recv, recv_nowait = ws.recv_raw, ws.recv_raw_nowait
        queue = self.writer.queue
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
            frame = (cid, next(seq), IN, time.time_ns() // 1000, mono, is_text, data)
            if not queue.full:
                queue.put_nowait(frame)  # the common case, without a coroutine
                continue
            # No room: stop reading until the writer catches up. Silence on the socket
            # from now on is ours, not the daemon's (see _heartbeat).
            self._waiting_for_writer = True
            await queue.put(frame)
            self._waiting_for_writer = False

    async def send(self, ws: Any, cid: int, text: str) -> None:
        """Send a text frame and record it once it is on its way."""
        received_us, mono = time.time_ns() // 1000, time.monotonic_ns()
        await ws.send(text)
        await self.writer.put((cid, next(self._seq), OUT, received_us, mono, True, text.encode()))

    async def _resync(self, ws: Any, cid: int) -> None:
        """Ask for everything we may have missed while disconnected."""
        try:
            await self.send(ws, cid, '{"type":"daemon_status"}')
            await self.send(ws, cid, '{"type":"list_sessions"}')
            for session_id in await self.writer.active_session_ids():
                await self.send(ws, cid, session_status_request(session_id))
        except ConnectionClosed:
            pass

    async def _heartbeat(self, ws: Any, cid: int) -> None:
        """Every interval: a WebSocket ping and a protocol ping; silence after both is death.

        websockets' own keepalive is off: on a timeout it starts a closing handshake
        that a frozen peer never answers (close_timeout more seconds). Here the
        transport is aborted at once, so a dead daemon is noticed within
        interval + timeout.
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
                pong = await ws.ping()
                await self.send(ws, cid, PING)
            except ConnectionClosed:
                return
            await asyncio.sleep(hb.timeout)
            answered = pong.done() and not pong.cancelled() and pong.exception() is None
            # While the receive loop waits for room in the writer's queue, silence is
            # ours (we stopped reading), not the daemon's.
            if answered or self.last_rx >= sent or self._waiting_for_writer:
                continue
            self._local_reason = (
                f"heartbeat timeout: nothing received within {hb.timeout:g}s of a ping"
            )
            log.warning(
                "daemon is not answering; dropping the connection",
                connection_id=cid,
                timeout=hb.timeout,
            )
            ws.transport.abort()
            return

    async def _close_on_stop(self, ws: Any) -> None:
        await self._stop.wait()
        # A clean close handshake: frames the daemon sent before its close frame are
        # still received and recorded by the receive loop.
        await ws.close(1001, "recorder shutting down")


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
