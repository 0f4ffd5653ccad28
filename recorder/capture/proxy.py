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
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from recorder.addresses import redact_url
from recorder.capture.admission import (
    METRICS_REFUSED,
    admit,
    metrics_refusal,
    metrics_token_wanted,
    relay_close,
    upstream_url,
)
from recorder.capture.dial import Dialer, close_within, not_reading
from recorder.capture.handshake import (
    USER_AGENT,
    http_get_health,
    json_response,
    origin,
    text_response,
)
from recorder.capture.wire import RecordingServerConnection
from recorder.config import Config
from recorder.pipeline.writer import Writer, WriterError
from recorder.protocol.frames import IN, OUT
from recorder.times import now_us

log = structlog.get_logger("recorder.proxy")

HEALTH_TIMEOUT = 3.0
# At most this many already-received frames are relayed in one socket write.
RELAY_BATCH = 64
STOP_TIMEOUT = 10.0
# A closing handshake with either side takes at most this long (websockets' own
# wait is unbounded for a peer that does not read).
CLOSE_TIMEOUT = 5.0
# After aborting what would not close, this long for the conversations to write
# down how they ended.
ABORTED_GRACE = 1.0
# Headers a browser or UI sends that the daemon may care about.
FORWARDED_HEADERS = ("Authorization", "x-api-key", "Origin", "Cookie", "User-Agent")


# --- the proxy ------------------------------------------------------------------


class Proxy:
    def __init__(self, config: Config, writer: Writer) -> None:
        self.config = config
        self.writer = writer
        p = config.proxy
        self.dialer = Dialer(config.daemon, p.upstream or config.daemon.url)
        self.upstream = self.dialer.url
        self.safe_upstream = redact_url(self.upstream)
        self.clients = 0
        self.conversations = 0
        # Called when a client's upstream connection succeeds: the daemon is up.
        self.on_upstream_reached: Callable[[], None] | None = None
        # The service's metrics, for GET /metrics on this port.
        self.metrics: Callable[[], str] | None = None
        self.server: Server | None = None
        self._pending: dict[ServerConnection, Any] = {}
        # Clients from their acceptance until their conversation starts (or they go).
        self._admitted: set[ServerConnection] = set()
        self._closing: set[asyncio.Task[bool]] = set()
        # The upstream connections of conversations under way, to abort at the stop.
        self._upstreams: set[Any] = set()

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
            server_header=USER_AGENT,
        )
        log.info("proxy listening", listen=p.listen, port=self.port, upstream=self.safe_upstream)

    async def stop(self, seconds: float = STOP_TIMEOUT) -> None:
        """Close every client with 1001 (each conversation then closes its upstream);
        what has not closed within ``seconds`` is aborted, both sides. Returns within
        ``seconds`` + ABORTED_GRACE, whatever the peers do."""
        if self.server is None:
            return
        for upstream in self._upstreams:
            if not_reading(upstream):
                # A daemon that reads nothing: what waits for it will never arrive
                # in time, and the conversation would hold the stop until the abort.
                upstream.transport.abort()
        self.server.close()
        if await self._closed_within(seconds):
            return
        # A peer that never completes its close must not hold the shutdown.
        stuck = [*self.server.connections, *self._upstreams, *self._pending.values()]
        if stuck:
            log.warning("proxy conversations did not close in time; aborting them")
        for conn in stuck:
            conn.transport.abort()
        if not await self._closed_within(ABORTED_GRACE):
            log.warning("proxy conversations did not end after an abort; leaving them")

    async def _closed_within(self, seconds: float) -> bool:
        assert self.server is not None
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await self.server.wait_closed()
        except TimeoutError:
            return False
        return True

    # --- handshake ----------------------------------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if target.path == "/health" and not upgrade:
            return await self._health()
        if target.path == "/metrics" and not upgrade and self.metrics is not None:
            return self._metrics(request.headers)
        if not upgrade:
            return None  # websockets answers 426
        p = self.config.proxy
        query = parse_qsl(target.query, keep_blank_values=True)
        admission = admit(p.token, request.headers, query)
        if admission.reject is not None:
            status, error = admission.reject
            log.warning("proxy client rejected", client=_peer(conn), error=error)
            return json_response(status, {"error": error})
        # A client counts from the moment it is accepted, handshake included.
        if self.clients + len(self._admitted) >= p.max_clients:
            return json_response(429, {"error": "connection_limit_exceeded"})
        self._admitted.add(conn)
        # However the client goes, whenever: its slot and its upstream are freed.
        conn.connection_lost_waiter.add_done_callback(lambda _: self._forget(conn))
        lend = p.inject_auth and admission.trusted
        headers = self._upstream_headers(request.headers, admission.strip_authorization, lend)
        url = upstream_url(self.upstream, target.path, admission.query, lend=lend)
        offered = [
            Subprotocol(s.strip())
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for s in value.split(",")
            if s.strip()
        ]
        try:
            upstream = await self.dialer.dial(
                url,
                additional_headers=headers,
                user_agent_header=None,
                subprotocols=offered or None,
                compression=None,
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
        if self.on_upstream_reached is not None:
            self.on_upstream_reached()
        if conn.connection_lost_waiter.done():  # the client left while we dialled
            self._forget(conn)
            await close_within(upstream, 1001, "client went away", CLOSE_TIMEOUT)
            return json_response(400, {"error": "client_closed_request"})
        self._pending[conn] = upstream
        return None

    def _forget(self, conn: ServerConnection) -> None:
        """A client that is gone before its conversation started: free what it held."""
        self._admitted.discard(conn)
        upstream = self._pending.pop(conn, None)
        if upstream is not None:
            task = asyncio.get_running_loop().create_task(
                close_within(upstream, 1001, "client went away", CLOSE_TIMEOUT)
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _upstream_headers(self, client: Headers, strip_authorization: bool, lend: bool) -> Headers:
        """What the client brought, and the recorder's credentials only when lent."""
        out = Headers()
        for name in FORWARDED_HEADERS:
            for value in client.get_all(name):
                out[name] = value
        if strip_authorization and "Authorization" in out:
            del out["Authorization"]
        if lend:
            self.dialer.add_credentials(out)
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
            self._admitted.discard(conn)
            upstream = self._pending.pop(conn, None)
            if upstream is not None:
                await close_within(upstream, 1001, "client handshake failed", CLOSE_TIMEOUT)

    def _metrics(self, headers: Headers) -> Response:
        """/metrics on this port: the proxy's token or metrics.token, where one is wanted."""
        p, own = self.config.proxy, self.config.metrics.token
        authorization = headers.get_all("Authorization")
        refused = metrics_refusal(
            authorization[0] if authorization else None,
            (own, p.token),
            wanted=metrics_token_wanted(p.host, own),
        )
        if refused is None:
            assert self.metrics is not None
            return text_response(200, self.metrics())
        response = text_response(refused, METRICS_REFUSED[refused])
        if refused == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="recorder"'
        return response

    async def _health(self) -> Response:
        p = self.config.proxy
        # Answered to anyone, as the daemon's is: the daemon's address without its user
        # name, password, path or query (the logs have the rest, redacted).
        info: dict[str, Any] = {"upstream": origin(self.upstream), "clients": self.clients}
        try:
            status, body = await asyncio.wait_for(
                http_get_health(self.upstream, self.dialer.ssl), HEALTH_TIMEOUT
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
        self._admitted.discard(client)
        # The client holds its slot from here: while its row is written, too.
        self.clients += 1
        peer = _peer(client)
        try:
            cid = await self.writer.open_connection(
                "proxy", redact_url(upstream_request_url(upstream)), peer
            )
        except WriterError as exc:
            # Not recorded, so not relayed: both sides are told, and nothing is held.
            self.clients -= 1
            log.warning(
                "cannot record a proxied conversation; closing it", client=peer, error=str(exc)
            )
            await asyncio.gather(
                close_within(upstream, 1011, "recorder cannot record", CLOSE_TIMEOUT),
                close_within(client, 1011, "recorder cannot record", CLOSE_TIMEOUT),
                return_exceptions=True,
            )
            return
        except BaseException:
            self.clients -= 1
            upstream.transport.abort()
            raise
        self.conversations += 1
        log.info("proxy client connected", connection_id=cid, client=peer)
        seq = itertools.count(1)
        first: list[str] = []
        offer, put = self.writer.offer, self.writer.put

        async def pump(src: Any, dst: Any, direction: str, side: str) -> None:
            recv, recv_nowait = src.recv_raw, src.recv_raw_nowait
            try:
                while True:
                    is_text, data = await recv()
                    batch = [(is_text, data, now_us(), time.monotonic_ns())]
                    # Whatever else has already arrived goes out in the same write.
                    while len(batch) < RELAY_BATCH and (more := recv_nowait()) is not None:
                        batch.append((*more, now_us(), time.monotonic_ns()))
                    try:
                        await dst.send_many([(t, d) for t, d, _, _ in batch])
                    finally:
                        # Recorded even when the other side is gone: the sender sent it.
                        for is_text, data, received_us, mono in batch:
                            frame = (cid, next(seq), direction, received_us, mono, is_text, data)
                            if not offer(frame):
                                await put(frame)  # back-pressure: stop reading
            except ConnectionClosed:
                pass
            if not first:
                first.append(side)
            code, reason = relay_close(src.protocol.close_rcvd, f"{side} connection lost")
            await close_within(dst, code, reason, CLOSE_TIMEOUT)

        self._upstreams.add(upstream)
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
            self._upstreams.discard(upstream)
        closer = first[0] if first else "recorder"
        ws = client if closer == "client" else upstream
        close = ws.protocol.close_rcvd if closer in ("client", "upstream") else None
        if close is None and closer != "recorder" and ws.protocol.close_sent is not None:
            # We ended that side ourselves (websockets failed it): say so, and why.
            close, closer = ws.protocol.close_sent, "recorder"
            if close.code == 1009:
                error = error or self.dialer.too_big
        code = close.code if close is not None else 1006
        reason = close.reason if close is not None else None
        if close is None and error is None:
            error = f"{closer} connection lost"
        try:
            await self.writer.close_connection(
                cid, code=code, reason=reason, closed_by=closer, error=error
            )
        except WriterError:
            pass  # the writer is gone; the service says what was lost
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
