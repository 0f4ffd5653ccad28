"""A session's page (``/sessions/{id}``): the story ``recorder show`` tells; and its
JSON (``/api/sessions/{id}``), what ``recorder show --format json`` prints."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from recorder.cli.postmortem import show_json, show_lines
from recorder.db.session_ids import NoSuchSession
from recorder.web.paths import SESSION_ID
from recorder.web.render import Endpoint, Reader, api_error, html, session_href


def story_page(reads: Reader) -> Endpoint:
    async def page(request: Request) -> Response:
        wanted = request.path_params[SESSION_ID]
        try:
            lines = await reads(lambda r: show_lines(r, wanted))
        except NoSuchSession as exc:
            return html("error.html", 404, message=str(exc))
        return html(
            "session.html",
            session_id=wanted,
            story="\n".join(lines),
            replay_href=session_href(wanted, "replay"),
        )

    return page


def story_api(reads: Reader) -> Endpoint:
    async def api(request: Request) -> Response:
        wanted = request.path_params[SESSION_ID]
        try:
            return JSONResponse(await reads(lambda r: show_json(r, wanted)))
        except NoSuchSession as exc:
            return api_error(404, str(exc))

    return api
