"""The proxy's rules for a client's handshake and close, and who may read /metrics,
as pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.datastructures import Headers
from websockets.frames import Close

from recorder.addresses import SECRET_QUERY_KEYS, is_loopback
from recorder.capture.handshake import bearer, bearer_token, same_secret


@dataclass(frozen=True)
class Admission:
    """What to do with a client's handshake: reject, or forward with these credentials."""

    reject: tuple[int, str] | None
    query: list[tuple[str, str]]
    strip_authorization: bool
    # The client presented the proxy's token: it may be lent the recorder's own
    # credentials (proxy.inject_auth). Without a token configured, nobody is.
    trusted: bool = False


def admit(token: str | None, headers: Headers, query: list[tuple[str, str]]) -> Admission:
    """Check the proxy's own token (Bearer or ``?token=``); it is never forwarded."""
    if not token:
        return Admission(None, query, False)
    if same_secret(bearer(headers), token):
        return Admission(None, query, True, trusted=True)
    # Every value is compared (no early stop), in constant time each.
    presented = [k == "token" and same_secret(v, token) for k, v in query]
    if any(presented):
        kept = [kv for kv, match in zip(query, presented, strict=True) if not match]
        return Admission(None, kept, False, True)
    offered = bearer(headers) is not None or any(k == "token" for k, _ in query)
    return Admission(
        (401, "proxy_token_invalid" if offered else "credentials_missing"), query, False
    )


# What a refused /metrics request is told (never which token was wrong, nor why).
METRICS_REFUSED = {
    401: "/metrics wants a token: send it as Authorization: Bearer <token>\n",
    403: "/metrics on an address other machines reach wants metrics.token\n",
}


def metrics_token_wanted(listen_host: str, own_token: str | None) -> bool:
    """Whether /metrics on this listen address wants a token: always on an address
    other machines reach, and wherever ``metrics.token`` is set (it was set to be used)."""
    return not is_loopback(listen_host) or bool(own_token)


def metrics_refusal(
    authorization: str | None, tokens: Sequence[str | None], *, wanted: bool
) -> int | None:
    """None when /metrics may be answered; else the HTTP status to refuse with: 401
    without a matching ``Authorization: Bearer`` token, 403 when one is wanted but
    none is configured (a proxy open to all, ``proxy.allow_remote_without_auth``).
    ``tokens`` are those this port takes (``metrics.token``, and ``proxy.token`` on
    the proxy's port); only a header counts, never the URL, which logs keep."""
    if not wanted:
        return None
    configured = [t for t in tokens if t]
    if not configured:
        return 403
    offered = bearer_token(authorization)
    # Every token is compared (no early stop), each in constant time.
    matches = [same_secret(offered, token) for token in configured]
    return None if any(matches) else 401


def upstream_url(base: str, path: str, query: list[tuple[str, str]], *, lend: bool = False) -> str:
    """The daemon URL for a client request: the client's path (if any) and query go
    upstream. Credentials in the configured URL (``?token=``, ``?apiKey=``) go only
    when ``lend``: the recorder's credentials are not every client's."""
    parts = urlsplit(base)
    upstream_path = path if path not in ("", "/") else (parts.path or "/")
    own = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if lend or k.lower() not in SECRET_QUERY_KEYS
    ]
    merged = own + query
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
