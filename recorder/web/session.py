"""A session's page (``/sessions/{id}``): the story ``recorder show`` tells and a
timeline strip of its frames; and its JSON (``/api/sessions/{id}``), what
``recorder show --format json`` prints."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from recorder.cli.postmortem import show_json, told_story
from recorder.db.recordings import Recordings
from recorder.db.rows import Session
from recorder.db.session_ids import NoSuchSession
from recorder.protocol.story import Story
from recorder.times import now_us
from recorder.web.charts import BUCKETS, Strip, strip
from recorder.web.paths import SESSION_ID
from recorder.web.render import Endpoint, Reader, api_error, html, session_href


@dataclass(frozen=True)
class Told:
    """What a session's page shows: ``recorder show``'s lines and the strip."""

    # The session's whole id: the URL may give the start of one.
    session_id: str
    lines: list[str]
    strip: Strip


def told(recordings: Recordings, wanted: str) -> Told:
    """The story, read once, and the strip over the session's span (from its first
    frame to its end, or now while it runs; its frames outside that span widen it)."""
    lines, row, story = told_story(recordings, wanted)
    start, end = strip_span(row, story)
    counts = recordings.frame_strip(row.id, start, end, BUCKETS)
    return Told(row.id, lines, strip(counts, story.gaps, start, end))


def strip_span(row: Session, story: Story) -> tuple[int, int]:
    start = min(story.start_us, row.first_seen_us or story.start_us)
    end = story.end_us if story.end_us is not None else now_us()
    return start, max(end, row.last_seen_us)


def story_page(reads: Reader) -> Endpoint:
    async def page(request: Request) -> Response:
        wanted = request.path_params[SESSION_ID]
        try:
            found = await reads(lambda r: told(r, wanted))
        except NoSuchSession as exc:
            return html("error.html", 404, message=str(exc))
        sid = found.session_id
        return html(
            "session.html",
            session_id=sid,
            story="\n".join(found.lines),
            strip=found.strip,
            replay_href=session_href(sid, "replay"),
            frames_href="/frames?" + urlencode({"session": sid}),
            json_href="/api" + session_href(sid),
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
