"""The console's pages and their JSON: what each shows of :class:`Recordings`.

Every recorded byte is hostile: templates escape everything (Jinja2's autoescape),
links carry recorded ids only percent-encoded in our own paths, and no page has an
inline script or style (the CSP forbids them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from recorder.cli.render import session_json, when
from recorder.db.recordings import Recordings
from recorder.db.rows import Session
from recorder.db.session_ids import NoSuchSession
from recorder.protocol.story import span
from recorder.times import now_us, parse_when

T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]

# Sessions on one page of the list.
PAGE = 50

TEMPLATES = Environment(
    loader=PackageLoader("recorder.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


class Reader(Protocol):
    """Runs one short read of the database (:class:`recorder.web.app.Reads`)."""

    async def __call__(self, read: Callable[[Recordings], T]) -> T: ...


class BadQuery(ValueError):
    """A filter in the URL that means nothing (a since that is not a time)."""


@dataclass(frozen=True)
class Filters:
    """The sessions list's filters, as the URL gives them; empty means unset."""

    status: str | None = None
    since: str | None = None
    orchestrator: str | None = None
    q: str | None = None
    before: str | None = None

    @classmethod
    def of(cls, request: Request) -> Filters:
        def get(name: str) -> str | None:
            return request.query_params.get(name) or None

        return cls(get("status"), get("since"), get("orchestrator"), get("q"), get("before"))

    def since_us(self) -> int | None:
        if self.since is None:
            return None
        try:
            return parse_when(self.since)
        except (ValueError, OverflowError) as exc:
            raise BadQuery(f"since: {exc}") from None

    def read(self, recordings: Recordings) -> tuple[list[Session], str | None]:
        """A page of sessions and the key of the next one (None: no more)."""
        found = recordings.sessions(
            status=self.status,
            since_us=self.since_us(),
            orchestrator=self.orchestrator,
            text=self.q,
            before=self.before,
            limit=PAGE + 1,
        )
        more = len(found) > PAGE
        return found[:PAGE], (found[PAGE - 1].id if more else None)

    def link(self, before: str) -> str:
        """This list's URL for the page after the session ``before``."""
        kept = {k: v for k, v in vars(self).items() if v is not None and k != "before"}
        return "/?" + urlencode({**kept, "before": before})


def took(row: Session) -> str:
    """How long the session ran, as the recording shows it (running: until now)."""
    start, end = span(vars(row))
    seconds = max(0, ((end if end is not None else now_us()) - start) // 1_000_000)
    parts = [(seconds // 3600, "h"), (seconds % 3600 // 60, "min"), (seconds % 60, "s")]
    shown = " ".join(f"{n} {unit}" for n, unit in parts if n) or "0 s"
    return shown if end is not None else f"{shown}, running"


def session_view(row: Session) -> dict[str, Any]:
    return {
        "id": row.id,
        "href": "/sessions/" + quote(row.id, safe=""),
        "status": row.status or "?",
        "orchestrator": row.orchestrator_id or "",
        "type": row.session_type or "",
        "task": row.task_description or "",
        "frames": row.frame_count,
        "first_seen": when(row.first_seen_us),
        "took": took(row),
    }


def html(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**values), status_code=status)


def sessions_page(reads: Reader) -> Endpoint:
    async def page(request: Request) -> Response:
        filters = Filters.of(request)
        try:
            rows, after = await reads(filters.read)
        except BadQuery as exc:
            return html("error.html", 400, message=str(exc))
        return html(
            "sessions.html",
            sessions=[session_view(r) for r in rows],
            filters=filters,
            next_href=filters.link(after) if after is not None else None,
        )

    return page


def sessions_api(reads: Reader) -> Endpoint:
    async def api(request: Request) -> Response:
        filters = Filters.of(request)
        try:
            rows, after = await reads(filters.read)
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"sessions": [session_json(r) for r in rows], "next_before": after})

    return api


def session_page(reads: Reader) -> Endpoint:
    from recorder.cli.postmortem import show_lines

    async def page(request: Request) -> Response:
        wanted = request.path_params["session_id"]
        try:
            lines = await reads(lambda r: show_lines(r, wanted))
        except NoSuchSession as exc:
            return html("error.html", 404, message=str(exc))
        return html("session.html", session_id=wanted, story="\n".join(lines))

    return page
