"""The proxy's rules for a client's handshake and close, as pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.datastructures import Headers
from websockets.frames import Close

from recorder.addresses import SECRET_QUERY_KEYS
from recorder.capture.handshake import bearer, same_secret


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
