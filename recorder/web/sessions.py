"""The sessions list (``/``) and its JSON (``/api/sessions``): newest first, filtered,
paged by key; and the sessions newer than the list's top row (``newer_than``), which
the list page's script (static/sessions.js) polls for to insert them live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from recorder.cli.render import session_json, when
from recorder.db.recordings import Recordings
from recorder.db.rows import Session
from recorder.protocol.story import span
from recorder.times import now_us, parse_when
from recorder.web.render import BadQuery, Endpoint, Reader, api_error, html, session_href

# Sessions on one page of the list.
PAGE = 50


@dataclass(frozen=True)
class Filters:
    """The sessions list's filters, as the URL gives them; empty means unset."""

    status: str | None = None
    since: str | None = None
    orchestrator: str | None = None
    q: str | None = None
    before: str | None = None
    # The id of the list's top row: only sessions listed above it (the newest PAGE
    # nearest to it), for a list that grows at its top.
    newer_than: str | None = None

    @classmethod
    def of(cls, request: Request) -> Filters:
        def get(name: str) -> str | None:
            return request.query_params.get(name) or None

        found = cls(
            get("status"),
            get("since"),
            get("orchestrator"),
            get("q"),
            get("before"),
            get("newer_than"),
        )
        if found.before is not None and found.newer_than is not None:
            raise BadQuery("before and newer_than: one page is older, the other newer; not both")
        return found

    @property
    def live(self) -> bool:
        """Whether the list shows its newest page, where new sessions appear."""
        return self.before is None and self.newer_than is None

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
            newer_than=self.newer_than,
            limit=PAGE + 1,
        )
        more = len(found) > PAGE
        if self.newer_than is not None:
            # Newest first, the extra one (furthest from the key) first of all: the
            # PAGE nearest the key are given, and the next poll takes the rest.
            return found[-PAGE:], (found[-PAGE].id if more else None)
        return found[:PAGE], (found[PAGE - 1].id if more else None)

    def link(self, before: str) -> str:
        """This list's URL for the page after the session ``before``."""
        kept = {
            k: v
            for k, v in vars(self).items()
            if v is not None and k not in ("before", "newer_than")
        }
        return "/?" + urlencode({**kept, "before": before})


def took(row: Session) -> str:
    """How long the session ran, as the recording shows it (running: until now)."""
    start, end = span(vars(row))
    micros = max(0, (end if end is not None else now_us()) - start)
    seconds = micros // 1_000_000
    parts = [(seconds // 3600, "h"), (seconds % 3600 // 60, "min"), (seconds % 60, "s")]
    # Under a minute, tenths: a session of 0.8 s is not one of "0 s".
    shown = (
        f"{micros / 1e6:.1f} s"
        if seconds < 60
        else " ".join(f"{n} {unit}" for n, unit in parts if n)
    )
    return shown if end is not None else f"{shown}, running"


def session_view(row: Session) -> dict[str, Any]:
    """A row of the list as the page shows it, each cell text (and the link's path)."""
    return {
        "id": row.id,
        "href": session_href(row.id),
        **cells(row),
    }


def cells(row: Session) -> dict[str, Any]:
    """What the list's cells show of a session but its id; the live list's script
    builds new rows of these (``rows`` of a ``newer_than`` answer)."""
    return {
        "status": row.status or "?",
        "orchestrator": row.orchestrator_id or "",
        "type": row.session_type or "",
        "task": row.task_description or "",
        "frames": row.frame_count,
        "first_seen": when(row.first_seen_us),
        "took": took(row),
    }


def sessions_page(reads: Reader) -> Endpoint:
    async def page(request: Request) -> Response:
        try:
            filters = Filters.of(request)
            rows, after = await reads(filters.read)
        except BadQuery as exc:
            return html("error.html", 400, message=str(exc))
        return html(
            "sessions.html",
            sessions=[session_view(r) for r in rows],
            filters=filters,
            next_href=filters.link(after)
            if after is not None and filters.newer_than is None
            else None,
        )

    return page


def sessions_api(reads: Reader) -> Endpoint:
    async def api(request: Request) -> Response:
        try:
            filters = Filters.of(request)
            rows, after = await reads(filters.read)
        except BadQuery as exc:
            return api_error(400, str(exc))
        if filters.newer_than is None:
            return JSONResponse({"sessions": [session_json(r) for r in rows], "next_before": after})
        return JSONResponse(
            {
                "sessions": [session_json(r) for r in rows],
                # The list's cells of each, as text (the page's script shows them).
                "rows": [cells(r) for r in rows],
                # More newer than these: ask again with newer_than the first one's id.
                "more": after is not None,
            }
        )

    return api


def routes(reads: Reader) -> list[Route]:
    return [
        Route("/", sessions_page(reads), methods=["GET"]),
        Route("/api/sessions", sessions_api(reads), methods=["GET"]),
    ]
