"""A session's replay in the browser (``/sessions/{id}/replay?speed=4&t=90&idle=2``)
and what its player reads (``/api/sessions/{id}/replay``, ``.../markers``,
``.../search``): pages of cues after a cursor, the markers and checkpoints to seek
with, and where a text occurs. The player (static/player.js) paces the cues as
``recorder replay`` does (:mod:`recorder.replay.timing`)."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from recorder.db.recordings import Recordings
from recorder.db.session_ids import NoSuchSession
from recorder.replay.timing import GAP_WAIT
from recorder.web import replay_reads
from recorder.web.cues import QUERY_CHARS, START, BadCursor, decode
from recorder.web.paths import SESSION_ID
from recorder.web.render import BadQuery, Endpoint, Reader, api_error, html, session_href

# The fastest a player goes: past it, every pause is nothing anyway.
MAX_SPEED = 1000.0


def _seconds(request: Request, name: str, *, positive: bool = False) -> float | None:
    """A number of seconds (or a speed) from the URL, or None when it is not there."""
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadQuery(f"{name}: not a number: {text[:40]!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise BadQuery(f"{name}: must be a {'positive' if positive else 'non-negative'} number")
    return value


def _pace(request: Request) -> dict[str, float | None]:
    speed = _seconds(request, "speed", positive=True)
    if speed is not None and speed > MAX_SPEED:
        raise BadQuery(f"speed: at most {MAX_SPEED:g}")
    return {
        "speed": speed or 1.0,
        "t": _seconds(request, "t"),
        "idle": _seconds(request, "idle", positive=True),
    }


def pages(reads: Reader) -> dict[str, Endpoint]:
    """Session pages by what follows the id: {"replay": ...}."""

    async def replay_page(request: Request) -> Response:
        wanted = request.path_params[SESSION_ID]
        try:
            pace = _pace(request)
            found = await reads(lambda r: r.session(wanted).id)
        except BadQuery as exc:
            return html("error.html", 400, message=str(exc))
        except NoSuchSession as exc:
            return html("error.html", 404, message=str(exc))
        return html(
            "replay.html",
            session_id=found,
            session_href=session_href(found),
            api="/api" + session_href(found),
            speed=f"{pace['speed']:g}",
            start="" if pace["t"] is None else f"{pace['t']:g}",
            idle="" if pace["idle"] is None else f"{pace['idle']:g}",
            gap_wait=f"{GAP_WAIT:g}",
        )

    return {"replay": replay_page}


def api(reads: Reader) -> dict[str, Endpoint]:
    """Session JSON by what follows the id: "replay" (a page of cues after
    ``cursor``, those before ``from`` seconds skipped), "markers", "search" (``q``)."""

    async def answer(request: Request, read: Any) -> Response:
        try:
            return JSONResponse(await reads(read))
        except NoSuchSession as exc:
            return api_error(404, str(exc))

    async def replay_api(request: Request) -> Response:
        wanted = request.path_params[SESSION_ID]
        try:
            text = request.query_params.get("cursor")
            at = START if text is None else decode(text)
            since = _seconds(request, "from")
        except (BadCursor, BadQuery) as exc:
            return api_error(400, str(exc))
        return await answer(request, lambda r: replay_reads.page(r, wanted, at, since))

    async def markers_api(request: Request) -> Response:
        wanted = request.path_params[SESSION_ID]
        return await answer(request, lambda r: replay_reads.markers(r, wanted))

    async def search_api(request: Request) -> Response:
        wanted = request.path_params[SESSION_ID]
        query = request.query_params.get("q", "")
        if not query or len(query) > QUERY_CHARS:
            return api_error(400, f"q: 1 to {QUERY_CHARS} characters to look for")

        def read(r: Recordings) -> dict[str, Any]:
            return replay_reads.search(r, wanted, query)

        return await answer(request, read)

    return {"replay": replay_api, "markers": markers_api, "search": search_api}
