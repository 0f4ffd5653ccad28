"""The simulated daemon's socket side: handshakes, sends, the journal, the firehose.

:class:`DaemonServer` knows connections, not sessions; the daemon's behaviour
(:class:`~recorder.simulator.daemon.Simulator`) answers the messages it receives.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import http
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio import server as ws_server
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from recorder.capture.handshake import json_response
from recorder.protocol.daemon import HEALTH_CHECK_FRAME
from recorder.simulator.auth import authenticate
from recorder.simulator.frames import (
    FIREHOSE_BATCH,
    RESTART_CODE,
    RESTART_REASON,
    SHUTDOWN_CODE,
    SHUTDOWN_REASON,
    TOKEN_EXPIRED_CODE,
    TOKEN_EXPIRED_REASON,
    JSONObject,
    firehose_template,
    stream_end_frame,
)
from recorder.simulator.options import JournalEntry, SimulatorOptions

logger = logging.getLogger("recorder.simulator")


@dataclass(eq=False, slots=True)
class _Conn:
    id: int
    ws: ServerConnection
    authenticated: bool
    attempts: int = 0  # frames we tried to send, for disconnect_after
    doomed: bool = False  # a forced close is under way: send nothing more
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class DaemonServer:
    """A daemon's WebSocket server without the daemon: subclasses answer messages."""

    def __init__(self, options: SimulatorOptions | None, firehose_session: str) -> None:
        self.options = options or SimulatorOptions()
        self.journal: list[JournalEntry] = []
        self._firehose_id = firehose_session
        self._server: ws_server.Server | None = None
        self._started = time.monotonic()
        self._conns: dict[ServerConnection, _Conn] = {}
        self._handshake_auth: dict[ServerConnection, bool] = {}
        self._admitted: dict[ServerConnection, bool] = {}
        self._total_connections = 0
        self.frames_sent = 0
        self._sent_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._connection_event = asyncio.Event()
        # Notified whenever a connection opens or closes (see settle()).
        self._changed = asyncio.Condition()
        self._forced_disconnects = 0
        self._background: set[asyncio.Task[None]] = set()
        self._journal_file: IO[str] | None = None

    # ---------------------------------------------------------------- what subclasses add

    async def _dispatch(self, conn: _Conn, data: str | bytes) -> None:
        """Answer one message from a client."""
        raise NotImplementedError

    def health(self) -> JSONObject:
        """The body of ``GET /health``."""
        return {"status": "healthy", "uptime": self.uptime_ms}

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        opts = self.options
        if opts.journal_path:
            self._journal_file = _open_journal(opts.journal_path)
        self._started = time.monotonic()
        self._server = await ws_server.serve(
            self._handler,
            opts.host,
            opts.port,
            process_request=self._process_request,
            process_response=self._process_response,
            max_size=opts.max_size,
            compression="deflate" if opts.compression else None,
        )

    async def stop(self) -> None:
        """Close every connection with 1000 "Server shutting down", as on SIGTERM."""
        server, self._server = self._server, None
        if server is None:
            return
        # Quiet the sessions first so nothing races the close frames.
        await _cancel_all(self._background)
        server.close(code=SHUTDOWN_CODE, reason=SHUTDOWN_REASON)
        await server.wait_closed()
        await _cancel_all(self._background)
        if self._journal_file is not None:
            self._journal_file.close()
            self._journal_file = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.options.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}"

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
        return len(self._conns)

    @property
    def total_connections(self) -> int:
        """Connections accepted since start (the last journal ``conn`` number)."""
        return self._total_connections

    @property
    def forced_disconnects(self) -> int:
        return self._forced_disconnects

    @property
    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    async def wait_connections(self, n: int, timeout: float | None = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``n`` connections in total have been accepted (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while self._total_connections < n:
                await self._connection_event.wait()

    async def settle(self, check: Callable[[], bool], timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until ``check()`` holds, looking again as connections open and close."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(check)

    async def wait_frames_sent(self, n: int, timeout: float | None = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``n`` frames in total have been sent to clients."""
        if self.frames_sent >= n:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sent_waiters, (n, id(waiter), waiter))
        async with asyncio.timeout(timeout):
            await waiter

    async def broadcast_raw(self, data: str | bytes, *, text: bool | None = None) -> None:
        """Send ``data`` as is to every client (``text=True`` sends bytes as a TEXT frame)."""
        for conn in list(self._conns.values()):
            await self._send(conn, data, text=text)

    async def broadcast(self, frame: str) -> None:
        for conn in list(self._conns.values()):
            await self._send(conn, frame)

    async def disconnect_all(self, code: int = RESTART_CODE, reason: str = RESTART_REASON) -> None:
        closing = [conn.ws.close(code, reason) for conn in list(self._conns.values())]
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        if target.path == "/health":
            return json_response(200, self.health())
        if not any("websocket" in value.lower() for value in request.headers.get_all("Upgrade")):
            return None  # websockets answers 426 Upgrade Required
        opts = self.options
        error = authenticate(opts.token, opts.api_key, request.headers, parse_qs(target.query))
        if error is not None:
            return json_response(401, {"error": error})
        self._handshake_auth[ws] = bool(opts.token or opts.api_key)
        return None

    def _process_response(
        self, ws: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        authenticated = self._handshake_auth.pop(ws, False)
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        limit = self.options.max_connections
        if limit > 0 and self._live_connections() >= limit:
            return json_response(429, {"error": "connection_limit_exceeded"})
        # Counted from here, not from the handler, so concurrent handshakes can't
        # both slip under the limit.
        self._admitted[ws] = authenticated
        return None

    def _live_connections(self) -> int:
        for ws in [ws for ws in self._admitted if ws.state is State.CLOSED]:
            del self._admitted[ws]
        return len(self._conns) + len(self._admitted)

    async def _handler(self, ws: ServerConnection) -> None:
        self._total_connections += 1
        conn = _Conn(self._total_connections, ws, self._admitted.pop(ws, False))
        self._conns[ws] = conn
        async with self._changed:
            self._changed.notify_all()
        self._connection_event.set()
        self._connection_event = asyncio.Event()
        try:
            if not await self._send(conn, HEALTH_CHECK_FRAME):
                return
            opts = self.options
            if opts.firehose > 0:
                _start(conn.tasks, self._firehose(conn))
            if opts.expire_token_after > 0 and conn.authenticated:
                _start(conn.tasks, self._expire(conn, opts.expire_token_after))
            async for message in ws:
                self._record(conn.id, "received", message)
                await self._dispatch(conn, message)
        except ConnectionClosed:
            pass
        finally:
            del self._conns[ws]
            await _cancel_all(conn.tasks)
            async with self._changed:
                self._changed.notify_all()

    async def _send(self, conn: _Conn, data: str | bytes, *, text: bool | None = None) -> bool:
        """Send one frame, journal it, and apply the forced-disconnect policy."""
        ws = conn.ws
        # Sending on a closing connection would block until the close completes.
        if conn.doomed or ws.state is not State.OPEN:
            return False
        conn.attempts += 1
        final = self._claim_disconnect(conn)
        try:
            await ws.send(data, text=text)
        except ConnectionClosed:
            return False
        finally:
            if final:
                self._spawn(self._force_close(conn))
        self._record(conn.id, "sent", data)
        return True

    def _claim_disconnect(self, conn: _Conn) -> bool:
        # Decided before the send so that exactly ``disconnect_after`` frames go out,
        # even when several tasks send to this connection at once.
        opts = self.options
        if opts.disconnect_after <= 0 or conn.attempts < opts.disconnect_after:
            return False
        if opts.disconnects > 0 and self._forced_disconnects >= opts.disconnects:
            return False
        self._forced_disconnects += 1
        conn.doomed = True
        return True

    async def _force_close(self, conn: _Conn) -> None:
        await conn.ws.close(RESTART_CODE, RESTART_REASON)

    async def _expire(self, conn: _Conn, after: float) -> None:
        await asyncio.sleep(after)
        await conn.ws.close(TOKEN_EXPIRED_CODE, TOKEN_EXPIRED_REASON)

    async def _firehose(self, conn: _Conn) -> None:
        count = self.options.firehose
        prefix, suffix = firehose_template(self._firehose_id, self.options.firehose_size, count)
        index = 0
        while index < count:
            if self._disconnect_policy_active():
                # Frame by frame, so the forced close lands after exactly N frames.
                if not await self._send(conn, f"{prefix}{index}{suffix}"):
                    return
                index += 1
                continue
            end = min(index + FIREHOSE_BATCH, count)
            if not self._write_batch(conn, [f"{prefix}{i}{suffix}" for i in range(index, end)]):
                return
            index = end
            # Same flow control as ws.send(): wait only while the write buffer is full.
            await conn.ws.drain()
            # A reader that keeps up never fills the buffer; let other clients run.
            await asyncio.sleep(0)
        await self._send(conn, stream_end_frame(self._firehose_id))

    def _disconnect_policy_active(self) -> bool:
        opts = self.options
        budget_left = opts.disconnects <= 0 or self._forced_disconnects < opts.disconnects
        return opts.disconnect_after > 0 and budget_left

    def _write_batch(self, conn: _Conn, texts: list[str]) -> bool:
        """Frame several messages and hand them to the socket in one write.

        ``ws.send()`` costs one syscall per frame, which caps a firehose near
        100k frames/s; the Sans-I/O protocol frames them the same way, and one
        write per batch more than doubles that. Nothing awaits in between, so no
        other send can interleave inside the batch.
        """
        ws = conn.ws
        if conn.doomed or ws.state is not State.OPEN or ws.transport.is_closing():
            return False
        protocol = ws.protocol
        for text in texts:
            protocol.send_text(text.encode())
        ws.transport.write(b"".join(protocol.data_to_send()))
        conn.attempts += len(texts)
        for text in texts:
            self._record(conn.id, "sent", text)
        return True

    def _record(self, conn_id: int, direction: str, data: str | bytes) -> None:
        entry = JournalEntry(conn_id, direction, data)
        if direction == "sent":
            self.frames_sent += 1
            while self._sent_waiters and self._sent_waiters[0][0] <= self.frames_sent:
                _, _, waiter = heapq.heappop(self._sent_waiters)
                if not waiter.done():
                    waiter.set_result(None)
        if self.options.journal:
            self.journal.append(entry)
        if self._journal_file is not None:
            line: JSONObject = {"conn": conn_id, "direction": direction}
            if isinstance(data, str):
                line["text"] = data
            else:
                line["b64"] = base64.b64encode(data).decode("ascii")
            self._journal_file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._journal_file.flush()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        _start(self._background, coro)


def _open_journal(path: str) -> IO[str]:
    # Closed in DaemonServer.stop(); _record flushes every line, so a crash loses nothing.
    return open(path, "a", encoding="utf-8")


def _start(tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    tasks.add(task)
    task.add_done_callback(_finished(tasks))


def _finished(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if not isinstance(exc, ConnectionClosed):
                logger.error("simulator task failed", exc_info=exc)

    return done


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
