"""The console's token: who may read the recordings through it.

Presented as ``Authorization: Bearer <token>``, or once as ``?token=<token>``, which
sets a cookie and redirects to the same URL without it (so that the token leaves the
address bar, the history and any shared link). Compared in constant time; never
logged, and uvicorn's access log, which would log ``?token=``, is off.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, quote, urlencode

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "recorder_web"
QUERY = "token"


def cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token, not the token (a cookie's
    characters are fewer than a token's, and a cookie jar is not a secret store)."""
    return hmac.new(token.encode(), b"recorder web console cookie", hashlib.sha256).hexdigest()


def _same(given: str | bytes, wanted: str) -> bool:
    raw = given.encode("utf-8", "surrogateescape") if isinstance(given, str) else given
    return hmac.compare_digest(raw, wanted.encode())


def _cookie(headers: Headers) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


class TokenGate:
    """ASGI middleware: 401 unless the request carries the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self._check(scope)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _check(self, scope: Scope) -> Response | None:
        """None: let it through; else the answer (the redirect, or 401)."""
        headers = Headers(scope=scope)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [value for name, value in query if name == QUERY]
        if given:
            if len(given) == 1 and _same(given[0], self.token):
                return self._redirect(scope, query)
            return _refused()
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(bearer.strip(), self.token):
            return None
        cookie = _cookie(headers)
        if cookie is not None and _same(cookie, self.cookie):
            return None
        return _refused()

    def _redirect(self, scope: Scope, query: list[tuple[str, str]]) -> Response:
        rest = urlencode([(name, value) for name, value in query if name != QUERY])
        # The path as it was sent: decoded, a session id's %2F would become a slash and
        # the link another page. "//host/x" would be a link to another site, "/\\host"
        # too for a browser: the path stays on this one.
        raw = scope.get("raw_path") or scope["path"].encode()
        sent = raw.split(b"?", 1)[0]
        path = "/" + quote(sent, safe="/%!$&'()*+,;=:@~").lstrip("/")
        response = RedirectResponse(path + ("?" + rest if rest else ""), status_code=303)
        response.set_cookie(COOKIE, self.cookie, httponly=True, samesite="strict", path="/")
        return response


def _refused() -> Response:
    return PlainTextResponse(
        "401: this console needs its token (Authorization: Bearer, or ?token= once)\n",
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )
