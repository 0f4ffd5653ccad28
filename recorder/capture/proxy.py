"""The recording proxy: a UI talks to the daemon through us and we record both ways.

Daemons send ``stream_chunk``, ``tool_call_*`` and ``task_*`` frames only to the
client that asked, so a passive link never sees them; a UI pointed at the proxy
(``NEXT_PUBLIC_DAEMON_WS_URL=ws://recorder-host:8788``) gets them recorded.

The upstream connection is opened during the client's handshake, so an upstream
rejection (401 with its JSON body, 429) reaches the client unchanged, and the
subprotocol the daemon picks is the one the client gets. Each frame is handed to
the writer as it is stamped and relayed after: a peer that stops reading cannot
hold back what the other side said, and relaying waits for the database only when
the writer's queue is full. This module admits clients and opens their upstreams; the
relay itself is :mod:`recorder.capture.conversation`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from recorder.addresses import redact_url
from recorder.capture.admission import (
    METRICS_REFUSED,
    Admission,
    admit,
    metrics_refusal,
    metrics_token_wanted,
    upstream_url,
)
from recorder.capture.conversation import CLOSE_TIMEOUT, Conversation
from recorder.capture.dial import Dialer, close_within, not_reading
from recorder.capture.handshake import (
    USER_AGENT,
    http_get_health,
    json_response,
    origin,
    text_response,
)
from recorder.capture.port_limit import MAX_UNADMITTED, PortConnection, Sockets
from recorder.config import Config
from recorder.pipeline.writer import Writer, WriterError

log = structlog.get_logger("recorder.proxy")

HEALTH_TIMEOUT = 3.0
STOP_TIMEOUT = 10.0
# After aborting what would not close, this long for the conversations to write
# down how they ended.
ABORTED_GRACE = 1.0
# Headers a browser or UI sends that the daemon may care about.
FORWARDED_HEADERS = ("Authorization", "x-api-key", "Origin", "Cookie", "User-Agent")


# --- the proxy ------------------------------------------------------------------


class Proxy:
    """The proxy's listening port: its clients, their upstreams, /health and /metrics."""

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
        self._sockets = Sockets(p.max_clients + MAX_UNADMITTED)

    def _connection(self, *args: Any, **kwargs: Any) -> PortConnection:
        conn = PortConnection(*args, **kwargs)
        conn.sockets = self._sockets
        return conn

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
            create_connection=self._connection,  # type: ignore[arg-type]
            max_size=self.config.daemon.max_frame_bytes,
            # Frames are relayed as they are; compressing on loopback costs latency.
            compression=None,
            server_header=USER_AGENT,
            # websockets' own closes (the server's, at the stop) end within this, not
            # its default 10 s, which outlasted a shutdown_timeout under 10 s.
            close_timeout=CLOSE_TIMEOUT,
        )
        log.info("proxy listening", listen=p.listen, port=self.port, upstream=self.safe_upstream)

    async def stop(self, seconds: float = STOP_TIMEOUT) -> None:
        """Close every client with 1001 (each conversation then closes its upstream);
        what has not closed within ``seconds`` is aborted, both sides. Returns within
        ``seconds`` + ABORTED_GRACE, whatever the peers do."""
        if self.server is None:
            return
        for conn in [*self._upstreams, *self.server.connections]:
            if not_reading(conn):
                # A daemon or a UI that reads nothing: what waits for it will never
                # arrive in time, and the conversation would hold the stop until the
                # abort, then asyncio.run's end until websockets' close gave up.
                conn.transport.abort()
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
        """Each HTTP request to this port: /health and /metrics are answered here; a
        WebSocket handshake is admitted (token, client limit) and its upstream opened
        (:meth:`_open_upstream`) before the client gets its 101."""
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
        return await self._open_upstream(conn, request.headers, target.path, admission)

    async def _open_upstream(
        self, conn: ServerConnection, client: Headers, path: str, admission: Admission
    ) -> Response | None:
        """Dial the daemon for an admitted client, with the headers and subprotocols it
        offered; None once the upstream is open (held for :meth:`_handle`), else the
        answer the client gets: the daemon's own refusal, or 502."""
        lend = self.config.proxy.inject_auth and admission.trusted
        headers = self._upstream_headers(client, admission.strip_authorization, lend)
        url = upstream_url(self.upstream, path, admission.query, lend=lend)
        offered = [
            Subprotocol(s.strip())
            for value in client.get_all("Sec-WebSocket-Protocol")
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
            log.info(
                "upstream rejected a proxied handshake",
                status=exc.response.status_code,
                client=_peer(conn),
            )
            return _refusal(exc.response)
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
            # orjson: a body nested 100 000 deep is a ValueError, not a RecursionError
            # out of the handshake (a traceback, and a 500 for the asker).
            answer = orjson.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {"status": "healthy" if 200 <= status < 300 else "unhealthy"}
        answer["recorder"] = info | {"listen": p.listen}
        return json_response(200 if 200 <= status < 300 else 503, answer)

    # --- one conversation ---------------------------------------------------------

    async def _handle(self, client: ServerConnection) -> None:
        """A client whose handshake succeeded: its conversation, from its connection row
        to the last frame either way (:class:`~recorder.capture.conversation.Conversation`)."""
        upstream = self._pending.pop(client)
        self._admitted.discard(client)
        # The client holds its slot from here: while its row is written, too.
        self.clients += 1
        peer = _peer(client)
        cid = await self._open_row(client, upstream, peer)
        if cid is None:
            return
        self.conversations += 1
        log.info("proxy client connected", connection_id=cid, client=peer)
        conversation = Conversation(self.writer, cid, client, upstream, self.dialer.too_big)
        self._upstreams.add(upstream)
        try:
            error = await conversation.relay()
        finally:
            self.clients -= 1
            self._upstreams.discard(upstream)
        await conversation.write_down(error)

    async def _open_row(self, client: ServerConnection, upstream: Any, peer: str) -> int | None:
        """The conversation's connection row; None (both sides closed, the client's slot
        given back) when the writer cannot take it."""
        try:
            return await self.writer.open_connection(
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
            return None
        except BaseException:
            self.clients -= 1
            upstream.transport.abort()
            raise


def _refusal(r: Response) -> Response:
    """The daemon said no: the client hears exactly what it said (its status, body, and
    the headers that explain it), on a connection that then closes."""
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
