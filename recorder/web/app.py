"""The console's ASGI app over one database, read-only: routes, headers, the token.

Every read opens the database read-only through :class:`Recordings`, runs in a worker
thread (the event loop never waits on SQLite or a driver) and closes it again, so no
read snapshot outlives a request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from anyio import CapacityLimiter, to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recorder.db.readonly import ReadError
from recorder.db.recordings import Recordings
from recorder.web import frames, live, replay, session, sessions, stats
from recorder.web.auth import TokenGate
from recorder.web.paths import session_route
from recorder.web.render import api_error, page_error

T = TypeVar("T")
# Reads run at once, at most: a read may hold a whole frame (up to daemon.max_frame_bytes)
# and parse it, and in `recorder run` the memory and the CPU are the service's.
MOST_READS = 4

# No inline script or style, nothing from elsewhere: a recorded byte that slipped
# through escaping still could not run.
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class Hardened:
    """ASGI middleware: the security headers on every response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = kept + HEADERS
            await send(message)

        await self.app(scope, receive, send_hardened)


class Reads:
    """Short reads of one database, each in a worker thread."""

    def __init__(self, url: str, shown: str) -> None:
        self.url = url
        self.shown = shown
        self.limiter = CapacityLimiter(MOST_READS)

    async def __call__(self, read: Callable[[Recordings], T]) -> T:
        return await to_thread.run_sync(self._read, read, limiter=self.limiter)

    def _read(self, read: Callable[[Recordings], T]) -> T:
        with Recordings.open(self.url, self.shown) as recordings:
            return read(recordings)


async def unreadable(_request: Request, exc: Exception) -> Response:
    """A database that cannot be read now (gone, locked, down): one line, not a trace."""
    return PlainTextResponse(f"503: {exc}\n", status_code=503)


def create_app(url: str, shown: str, token: str | None = None) -> Starlette:
    """The console over the database at ``url`` (named ``shown`` in messages); with
    ``token``, only to requests that carry it."""
    reads = Reads(url, shown)

    async def no_page(_request: Request) -> Response:
        return page_error(404, "no such page")

    async def no_api(_request: Request) -> Response:
        return api_error(404, "no such resource")

    session_pages = {"": session.story_page(reads), **replay.pages(reads)}
    session_api = {"": session.story_api(reads), **frames.api(reads), **replay.api(reads)}
    routes = [
        *sessions.routes(reads),
        session_route("/sessions", session_pages, no_page),
        session_route("/api/sessions", session_api, no_api),
        *frames.routes(reads),
        *live.routes(reads),
        *stats.routes(reads, shown),
        Mount("/static", StaticFiles(packages=[("recorder.web", "static")]), name="static"),
    ]
    # Outermost first: the headers go on the token's 401 and redirect too.
    middleware = [Middleware(Hardened)]
    if token:
        middleware.append(Middleware(TokenGate, token=token))
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={ReadError: unreadable}
    )
