"""HTTP around the WebSocket handshake: JSON answers, bearer tokens, the daemon's /health."""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import http
import json
import ssl
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Response

from recorder import __version__

USER_AGENT = f"orchestrator-recorder/{__version__}"


def json_response(status: int, obj: object) -> Response:
    """An HTTP response with a JSON body, as daemons answer /health and rejected handshakes."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def text_response(status: int, text: str) -> Response:
    """A plain-text HTTP response (Prometheus' text format is one)."""
    body = text.encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def same_secret(offered: str | None, secret: str) -> bool:
    """Whether a client's token is the secret, in time that does not depend on where
    they differ (``==`` stops at the first different character)."""
    if offered is None:
        return False
    return hmac.compare_digest(offered.encode(), secret.encode())


def bearer(headers: Headers) -> str | None:
    """The token of the first ``Authorization: Bearer`` header, if any."""
    values = headers.get_all("Authorization")
    return bearer_token(values[0] if values else None)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header's value, if it is ``Bearer <token>``."""
    if authorization is not None and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def origin(ws_url: str) -> str:
    """``scheme://host:port`` of a URL: what may be shown of a daemon's address to
    anyone. Its user name, password, path and query (``?token=``) are left out."""
    parts = urlsplit(ws_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


async def http_get_health(ws_url: str, ssl_context: ssl.SSLContext | None) -> tuple[int, bytes]:
    """GET /health on the daemon's HTTP port: (status, body). Bounded in size."""
    parts = urlsplit(ws_url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    context = (ssl_context or ssl.create_default_context()) if secure else None
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    # Not the URL's netloc: a user name and password in it are not the Host.
    netloc = origin(ws_url).partition("://")[2]
    try:
        writer.write(
            f"GET /health HTTP/1.1\r\nHost: {netloc}\r\nAccept: application/json\r\n"
            f"Connection: close\r\nUser-Agent: {USER_AGENT}\r\n\r\n".encode()
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
