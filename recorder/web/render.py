"""What every page of the console shares: the templates, how a page and an error are
answered, and the reader a page reads the database with.

Every recorded byte is hostile: templates escape everything (Jinja2's autoescape),
links carry recorded ids only percent-encoded in our own paths, and no page has an
inline script or style (the CSP forbids them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from recorder.db.recordings import Recordings

T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]

TEMPLATES = Environment(
    loader=PackageLoader("recorder.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


class Reader(Protocol):
    """Runs one short read of the database (:class:`recorder.web.app.Reads`)."""

    async def __call__(self, read: Callable[[Recordings], T]) -> T: ...


class BadQuery(ValueError):
    """A parameter in the URL that means nothing (a since that is not a time)."""


def html(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**values), status_code=status)


def page_error(status: int, message: str) -> HTMLResponse:
    return html("error.html", status, message=message)


def api_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def session_href(session_id: str, what: str = "") -> str:
    """Our own path to a session's page (``what``: "replay", ...): the id is one
    percent-encoded segment, whatever it holds (a slash, a quote, a script)."""
    return "/sessions/" + quote(session_id, safe="") + ("/" + what if what else "")
