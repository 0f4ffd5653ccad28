"""The recording proxy: a UI talks to the daemon through us and we record both ways.

Daemons send ``stream_chunk``, ``tool_call_*`` and ``task_*`` frames only to the
client that asked, so a passive link never sees them; a UI pointed at the proxy
(``NEXT_PUBLIC_DAEMON_WS_URL=ws://recorder-host:8788``) gets them recorded.

The upstream connection is opened during the client's handshake, so an upstream
rejection (401 with its JSON body, 429) reaches the client unchanged, and the
subprotocol the daemon picks is the one the client gets. Each frame is forwarded
first and recorded after: forwarding never waits for the database unless the
writer's queue is full.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Close
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from recorder import __version__
from recorder.config import Config, redact_url
from recorder.protocol import IN, OUT
from recorder.wire import RecordingClientConnection, RecordingServerConnection, json_response
from recorder.writer import Writer

log = structlog.get_logger("recorder.proxy")

HEALTH_TIMEOUT = 3.0
# At most this many already-received frames are relayed in one socket write.
RELAY_BATCH = 64
STOP_TIMEOUT = 10.0
# Headers a browser or UI sends that the daemon may care about.
FORWARDED_HEADERS = ("Authorization", "x-api-key", "Origin", "Cookie", "User-Agent")


# --- pure helpers ---------------------------------------------------------------


def bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


@dataclass(frozen=True)
class Admission:
    """What to do with a client's handshake: reject, or forward with these credentials."""

    reject: tuple[int, str] | None
    query: list[tuple[str, str]]
    strip_authorization: bool


def admit(token: str | None, headers: Headers, query: list[tuple[str, str]]) -> Admission:
    """Check the proxy's own token (Bearer or ``?token=``); it is never forwarded."""
    if not token:
        return Admission(None, query, False)
    if bearer(headers) == token:
        return Admission(None, query, True)
    if ("token", token) in query:
        return Admission(None, [kv for kv in query if kv != ("token", token)], False)
    offered = bearer(headers) is not None or any(k == "token" for k, _ in query)
    return Admission(
        (401, "proxy_token_invalid" if offered else "credentials_missing"), query, False
    )


def upstream_url(base: str, path: str, query: list[tuple[str, str]]) -> str:
    """The daemon URL for a client request: the client's path (if any) and query go upstream."""
    parts = urlsplit(base)
    upstream_path = path if path not in ("", "/") else (parts.path or "/")
    merged = parse_qsl(parts.query, keep_blank_values=True) + query
    return urlunsplit((parts.scheme, parts.netloc, upstream_path, urlencode(merged), ""))


SENDABLE = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))


def relay_close(close: Close | None, lost: str) -> tuple[int, str]:
    """The close to pass on to the other side, given what this side sent us."""
    if close is None:
        return 1011, lost
    if close.code == 1005:  # a close frame without a code
        return 1000, ""
    if close.code not in SENDABLE:
        return 1011, lost
    return close.code, close.reason


# --- the proxy ------------------------------------------------------------------


class Proxy:
    def __init__(self, config: Config, writer: Writer) -> None:
        self.config = config
        self.writer = writer
        p = config.proxy
        self.upstream = p.upstream or config.daemon.url
        self.safe_upstream = redact_url(self.upstream)
        self.clients = 0
        self.conversations = 0
        self.server: Server | None = None
        self._pending: dict[ServerConnection, Any] = {}
        self._ssl: ssl.SSLContext | None = None
        if self.upstream.startswith("wss://") and config.daemon.ca_file:
            self._ssl = ssl.create_default_context(cafile=config.daemon.ca_file)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        p = self.config.proxy
        self.server = await serve(
            self._handle,
            p.host,
            p.port,
            process_request=self._process_request,
            process_response=self._process_response,
            select_subprotocol=self._select_subprotocol,
            create_connection=RecordingServerConnection,
            max_size=self.config.daemon.max_frame_bytes,
            # Frames are relayed as they are; compressing on loopback costs latency.
            compression=None,
            server_header=f"orchestrator-recorder/{__version__}",
        )
        log.info("proxy listening", listen=p.listen, port=self.port, upstream=self.safe_upstream)

    async def stop(self) -> None:
        if self.server is None:
            return
        # Closes every client with 1001; each conversation then closes its upstream.
        self.server.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.server.wait_closed()
        except TimeoutError:
            # A peer that never completes its close must not hold the shutdown.
            log.warning("proxy conversations did not close in time; aborting them")
            for conn in list(self.server.connections):
                conn.transport.abort()
            await self.server.wait_closed()

    # --- handshake ----------------------------------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if target.path == "/health" and not upgrade:
            return await self._health()
        if not upgrade:
            return None  # websockets answers 426
        p = self.config.proxy
        query = parse_qsl(target.query, keep_blank_values=True)
        admission = admit(p.token, request.headers, query)
        if admission.reject is not None:
            status, error = admission.reject
            log.warning("proxy client rejected", client=_peer(conn), error=error)
            return json_response(status, {"error": error})
        if self.clients + len(self._pending) >= p.max_clients:
            return json_response(429, {"error": "connection_limit_exceeded"})
        headers = self._upstream_headers(request.headers, admission.strip_authorization)
        url = upstream_url(self.upstream, target.path, admission.query)
        offered = [
            Subprotocol(s.strip())
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for s in value.split(",")
            if s.strip()
        ]
        try:
            upstream = await connect(
                url,
                additional_headers=headers,
                user_agent_header=None,
                subprotocols=offered or None,
                create_connection=RecordingClientConnection,
                max_size=self.config.daemon.max_frame_bytes,
                open_timeout=self.config.daemon.open_timeout,
                compression=None,
                ssl=self._ssl,
            )
        except InvalidStatus as exc:
            # The daemon said no: the client hears exactly what it said.
            r = exc.response
            log.info(
                "upstream rejected a proxied handshake", status=r.status_code, client=_peer(conn)
            )
            kept = Headers(
                [
                    (k, v)
                    for k, v in r.headers.raw_items()
                    if k.lower() in ("content-type", "www-authenticate", "retry-after")
                ]
            )
            kept["Content-Length"] = str(len(r.body or b""))
            kept["Connection"] = "close"
            return Response(r.status_code, r.reason_phrase, kept, r.body or b"")
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            log.warning(
                "upstream unreachable",
                upstream=self.safe_upstream,
                error=str(exc) or type(exc).__name__,
            )
            return json_response(502, {"error": "upstream_unreachable"})
        self._pending[conn] = upstream
        return None

    def _upstream_headers(self, client: Headers, strip_authorization: bool) -> Headers:
        out = Headers()
        for name in FORWARDED_HEADERS:
            for value in client.get_all(name):
                out[name] = value
        if strip_authorization and "Authorization" in out:
            del out["Authorization"]
        if self.config.proxy.inject_auth:
            d = self.config.daemon
            for name in ("Authorization", "x-api-key"):
                if name in out:
                    del out[name]
            if d.token:
                out["Authorization"] = f"Bearer {d.token}"
            if d.api_key:
                out["x-api-key"] = d.api_key
        return out

    def _select_subprotocol(
        self, conn: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        upstream = self._pending.get(conn)
        chosen = upstream.subprotocol if upstream is not None else None
        return chosen if chosen in offered else None

    async def _process_response(
        self, conn: ServerConnection, request: Request, response: Response
    ) -> None:
        if response.status_code != 101:
            upstream = self._pending.pop(conn, None)
            if upstream is not None:
                await upstream.close(1001, "client handshake failed")

    async def _health(self) -> Response:
        p = self.config.proxy
        info: dict[str, Any] = {"upstream": self.safe_upstream, "clients": self.clients}
        try:
            status, body = await asyncio.wait_for(
                http_get_health(self.upstream, self._ssl), HEALTH_TIMEOUT
            )
        except (OSError, TimeoutError, ValueError) as exc:
            info |= {"upstreamReachable": False, "error": str(exc) or type(exc).__name__}
            return json_response(503, {"status": "unhealthy", "healthy": False, "recorder": info})
        info |= {"upstreamReachable": True, "upstreamStatus": status}
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {"status": "healthy" if 200 <= status < 300 else "unhealthy"}
        answer["recorder"] = info | {"listen": p.listen}
        return json_response(200 if 200 <= status < 300 else 503, answer)

    # --- one conversation ---------------------------------------------------------

    async def _handle(self, client: ServerConnection) -> None:
        upstream = self._pending.pop(client)
        self.clients += 1
        self.conversations += 1
        peer = _peer(client)
        cid = await self.writer.open_connection(
            "proxy", redact_url(upstream_request_url(upstream)), peer
        )
        log.info("proxy client connected", connection_id=cid, client=peer)
        seq = itertools.count(1)
        first: list[str] = []
        queue = self.writer.queue

        async def pump(src: Any, dst: Any, direction: str, side: str) -> None:
            recv, recv_nowait = src.recv_raw, src.recv_raw_nowait
            try:
                while True:
                    is_text, data = await recv()
                    batch = [(is_text, data, time.time_ns() // 1000, time.monotonic_ns())]
                    # Whatever else has already arrived goes out in the same write.
                    while len(batch) < RELAY_BATCH and (more := recv_nowait()) is not None:
                        batch.append((*more, time.time_ns() // 1000, time.monotonic_ns()))
                    try:
                        await dst.send_many([(t, d) for t, d, _, _ in batch])
                    finally:
                        # Recorded even when the other side is gone: the sender sent it.
                        for is_text, data, received_us, mono in batch:
                            frame = (cid, next(seq), direction, received_us, mono, is_text, data)
                            if queue.full:
                                await queue.put(frame)  # back-pressure: stop reading
                            else:
                                queue.put_nowait(frame)
            except ConnectionClosed:
                pass
            if not first:
                first.append(side)
            code, reason = relay_close(src.protocol.close_rcvd, f"{side} connection lost")
            await dst.close(code, reason)

        try:
            await asyncio.gather(
                pump(client, upstream, OUT, "client"),
                pump(upstream, client, IN, "upstream"),
            )
        except Exception as exc:  # a bug here must not take the service down
            log.exception("proxy conversation failed", connection_id=cid)
            client.transport.abort()
            upstream.transport.abort()
            first[:] = first or ["recorder"]
            error: str | None = f"proxy failed: {exc!r}"
        else:
            error = None
        finally:
            self.clients -= 1
        closer = first[0] if first else "recorder"
        ws = client if closer == "client" else upstream
        close = ws.protocol.close_rcvd if closer in ("client", "upstream") else None
        if close is None and closer != "recorder" and ws.protocol.close_sent is not None:
            # We ended that side ourselves (websockets failed it): say so, and why.
            close, closer = ws.protocol.close_sent, "recorder"
            if close.code == 1009:
                error = error or (
                    f"frame larger than daemon.max_frame_bytes "
                    f"({self.config.daemon.max_frame_bytes} bytes)"
                )
        code = close.code if close is not None else 1006
        reason = close.reason if close is not None else None
        if close is None and error is None:
            error = f"{closer} connection lost"
        await self.writer.close_connection(
            cid, code=code, reason=reason, closed_by=closer, error=error
        )
        log.info(
            "proxy client disconnected",
            connection_id=cid,
            closed_by=closer,
            code=code,
            reason=reason,
        )


def upstream_request_url(upstream: Any) -> str:
    """The URL the upstream connection was opened with (scheme, host, path, query)."""
    request = upstream.request
    host = request.headers.get("Host", "")
    scheme = "wss" if upstream.transport.get_extra_info("sslcontext") else "ws"
    return f"{scheme}://{host}{request.path}"


def _peer(conn: ServerConnection) -> str:
    addr = conn.remote_address
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


async def http_get_health(ws_url: str, ssl_context: ssl.SSLContext | None) -> tuple[int, bytes]:
    """GET /health on the daemon's HTTP port: (status, body). Bounded in size."""
    parts = urlsplit(ws_url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    context = (ssl_context or ssl.create_default_context()) if secure else None
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        writer.write(
            f"GET /health HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
            f"Connection: close\r\nUser-Agent: orchestrator-recorder/{__version__}\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await reader.read(1 << 20)
        while chunk := await reader.read(1 << 20):
            raw += chunk
            if len(raw) > 1 << 20:
                break
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError("not an HTTP response")
    return int(status_line[1]), body
