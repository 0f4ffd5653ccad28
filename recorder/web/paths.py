"""Routing of a session's pages, by the raw path: ``/sessions/{id}[/{what}]``.

A recorded session id can hold anything, a slash included. Links carry it as one
percent-encoded segment (:func:`recorder.web.render.session_href`), and the id is
read back from the path as the client sent it, before any decoding: a decoded path
could not tell the session ``a/replay`` from the replay of ``a``.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from recorder.web.render import Endpoint

# The session's id, for the handler that serves it.
SESSION_ID = "session_id"


def split(raw_path: bytes, prefix: str) -> tuple[str, str] | None:
    """(session id, what) of ``{prefix}/{id}[/{what}]``; None if it is not one."""
    path = raw_path.decode("latin-1")
    if not path.startswith(prefix + "/"):
        return None
    segment, _, what = path[len(prefix) + 1 :].partition("/")
    if not segment:
        return None
    return unquote(segment), what


def session_route(prefix: str, handlers: dict[str, Endpoint], missing: Endpoint) -> Route:
    """One route for ``{prefix}/{id}`` (handler "") and ``{prefix}/{id}/{what}``;
    ``missing`` answers a ``what`` nobody serves."""

    async def dispatch(request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        found = split(raw.split(b"?", 1)[0], prefix)
        handler = handlers.get(found[1]) if found is not None else None
        if found is None or handler is None:
            return await missing(request)
        request.scope.setdefault("path_params", {})[SESSION_ID] = found[0]
        return await handler(request)

    return Route(prefix + "/{rest:path}", dispatch, methods=["GET"])
