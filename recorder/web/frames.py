"""Frames: the table (``/frames``) and its JSON (``/api/frames``, and a session's,
``/api/sessions/{id}/frames``), paged by key; one frame's payload (``/frames/{id}``)
and its bytes (``/frames/{id}/raw``); the filter's frames as JSONL (``/frames.jsonl``),
byte for byte what ``recorder frames --format jsonl --limit 0`` prints.

The filters mean what ``recorder frames``'s options mean (a session by its id or the
start of it, a task by its id or description, a type, a direction, a connection,
since and until, grep).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from recorder.cli.render import frame_json, frame_line, frame_text
from recorder.db.frame_reads import INT64_MAX, FramePage
from recorder.db.pages import FrameFilter
from recorder.db.recordings import Recordings
from recorder.db.rows import Frame
from recorder.db.session_ids import NoSuchSession
from recorder.protocol.frames import IN, OPCODE_TEXT, OUT
from recorder.protocol.tame import one_line
from recorder.times import format_us, parse_when
from recorder.web.paths import SESSION_ID
from recorder.web.payload import TEXT_SHOWN, shown
from recorder.web.render import BadQuery, Endpoint, Reader, api_error, html, session_href

# Rows of a page, unless ``limit`` says otherwise (at most MOST_ROWS).
PAGE = 100
MOST_ROWS = 1000
PREVIEW = 100
# What one read of a frame's raw download takes: characters of a text, bytes else.
RAW_PART = 1024 * 1024
ARROWS = {IN: "←", OUT: "→"}


def number(name: str, text: str, least: int = 0) -> int:
    """A whole number from the URL, within what databases hold; BadQuery if not."""
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise BadQuery(f"{name}: expected a whole number, got {text[:40]!r}") from None
    if not least <= value <= INT64_MAX:
        raise BadQuery(f"{name}: must be between {least} and {INT64_MAX}, got {value}")
    return value


def moment(name: str, text: str) -> int:
    try:
        return parse_when(text)
    except (ValueError, OverflowError) as exc:
        raise BadQuery(f"{name}: {exc}") from None


@dataclass(frozen=True)
class FrameQuery:
    """The filters and the page's key, as the URL gives them; empty means unset."""

    session: str | None = None
    task: str | None = None
    type: str | None = None
    direction: str | None = None
    connection: str | None = None
    since: str | None = None
    until: str | None = None
    grep: str | None = None
    after: int | None = None
    before: int | None = None
    limit: int = PAGE

    @classmethod
    def of(cls, params: QueryParams, default_limit: int = PAGE) -> FrameQuery:
        """BadQuery names the first parameter that means nothing."""
        text: dict[str, Any] = {f.name: params.get(f.name) or None for f in fields(cls)}
        after = number("after", text["after"]) if text["after"] else None
        before = number("before", text["before"], 1) if text["before"] else None
        if params.get("newest") and before is None and after is None:
            before = INT64_MAX
        if after is not None and before is not None:
            raise BadQuery("after and before: a page has one key, not both")
        limit = number("limit", text["limit"]) if text["limit"] else default_limit
        query = cls(**{**text, "after": after, "before": before, "limit": limit})
        query.filter()  # every filter checked now, before any read
        return query

    def filter(self, **more: Any) -> FrameFilter:
        """The FrameFilter ``recorder frames`` would build from the same options."""
        if self.direction not in (None, IN, OUT):
            raise BadQuery(f"direction: expected {IN} or {OUT}, got {self.direction[:40]!r}")
        since = moment("since", self.since) if self.since else None
        until = moment("until", self.until) if self.until else None
        if since is not None and until is not None and since > until:
            raise BadQuery("since is later than until")
        connection = self.connection
        return FrameFilter(
            session_id=self.session,
            task=self.task,
            type=self.type,
            direction=self.direction,
            connection_id=number("connection", connection, -INT64_MAX) if connection else None,
            since_us=since,
            until_us=until,
            grep=self.grep,
            **more,
        )

    def filters(self) -> dict[str, str]:
        names = ("session", "task", "type", "direction", "connection", "since", "until", "grep")
        return {k: v for k in names if (v := getattr(self, k)) is not None}

    def link(self, path: str = "/frames", **key: int) -> str:
        """This filter's URL at ``path``, at the page ``key`` (after= or before=)."""
        extra = {"limit": str(self.limit)} if self.limit != PAGE else {}
        query = urlencode({**self.filters(), **extra, **{k: str(v) for k, v in key.items()}})
        return path + ("?" + query if query else "")

    def read(
        self, recordings: Recordings, heads: bool = False, f: FrameFilter | None = None
    ) -> FramePage:
        """A page of frames (``heads``: texts cut short, for a table) of ``f``, else of
        this filter with its session resolved. NoSuchSession where the session's
        start names several."""
        f = f if f is not None else recordings.named(self.filter())
        rows = min(self.limit or PAGE, MOST_ROWS)
        return recordings.frame_page(
            f, after=self.after, before=self.before, rows=rows, heads=heads
        )


def row_view(frame: Frame) -> dict[str, Any]:
    """A frame as a table row shows it; every value is text the template escapes."""
    text = frame_text(frame)
    if text is None:
        text = f"<{'binary' if frame.parse_error == 'binary' else 'bytes'}, {frame.size:,} bytes>"
    return {
        "id": frame.id,
        "href": f"/frames/{frame.id}",
        "time": format_us(frame.received_at_us),
        "arrow": ARROWS.get(frame.direction, "?"),
        "direction": frame.direction,
        "type": frame.type or "",
        "size": frame.size,
        "session": frame.session_id or "",
        "session_href": session_href(frame.session_id) if frame.session_id else None,
        "connection": frame.connection_id,
        "connection_href": f"/frames?connection={frame.connection_id}",
        "preview": one_line(text[: PREVIEW + 1], PREVIEW, say_length=False),
    }


def page_json(page: FramePage) -> dict[str, Any]:
    return {
        "frames": [frame_json(f) for f in page.frames],
        "next_after": page.later,
        "prev_before": page.earlier,
    }


def table_page(reads: Reader) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            query = FrameQuery.of(request.query_params)
            page = await reads(lambda r: query.read(r, heads=True))
        except (BadQuery, NoSuchSession) as exc:
            return html("error.html", 400, message=str(exc))
        return html(
            "frames.html",
            rows=[row_view(f) for f in page.frames],
            query=query,
            later=query.link(after=page.later) if page.later is not None else None,
            earlier=query.link(before=page.earlier) if page.earlier is not None else None,
            first=query.link(),
            newest=query.link(newest=1),
            jsonl=query.link("/frames.jsonl"),
            api=query.link("/api/frames"),
        )

    return endpoint


def page_api(reads: Reader, *, of_session: bool = False) -> Endpoint:
    """A page as JSON; with ``format=jsonl``, every frame of the filter as JSONL."""

    async def endpoint(request: Request) -> Response:
        as_jsonl = request.query_params.get("format") == "jsonl"
        try:
            query = FrameQuery.of(request.query_params, default_limit=0 if as_jsonl else PAGE)
            if of_session:  # the session is the path's, exactly as recorded
                query = replace(query, session=request.path_params[SESSION_ID])
            if as_jsonl:
                return await jsonl_response(reads, query, exact=of_session)
            f = None if not of_session else query.filter()
            page = await reads(lambda r: query.read(r) if f is None else query.read(r, f=f))
        except (BadQuery, NoSuchSession) as exc:
            return api_error(400, str(exc))
        return JSONResponse(page_json(page))

    return endpoint


async def jsonl_response(reads: Reader, query: FrameQuery, *, exact: bool = False) -> Response:
    """The filter's frames, oldest first, read a page at a time while they are sent
    (``exact``: the session as given, not the start of one). NoSuchSession before any."""

    def start(r: Recordings) -> tuple[FrameFilter, int]:
        f = query.filter()
        newest = r.newest_frame_id()
        if query.before is not None:
            newest = min(newest, query.before - 1)
        return (f if exact else r.named(f)), newest

    f, newest = await reads(start)

    async def lines() -> AsyncIterator[bytes]:
        after, left = query.after or 0, query.limit or None
        while True:
            wanted = replace(f, after_id=after, through_id=newest, limit=left or 0)
            batch = await reads(partial(first_page, f=wanted))
            if not batch:
                return
            yield b"".join(frame_line(frame) + b"\n" for frame in batch)
            after = batch[-1].id
            if left is not None:
                left -= len(batch)
                if left <= 0:
                    return

    headers = {"Content-Disposition": 'attachment; filename="frames.jsonl"'}
    return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)


def first_page(recordings: Recordings, f: FrameFilter) -> list[Frame]:
    return next(recordings.frame_pages(f), [])


def jsonl_download(reads: Reader) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            query = FrameQuery.of(request.query_params, default_limit=0)
            return await jsonl_response(reads, query)
        except (BadQuery, NoSuchSession) as exc:
            return api_error(400, str(exc))

    return endpoint


def frame_id(request: Request) -> int:
    return number("frame", request.path_params["frame_id"], 1)


def frame_page(reads: Reader) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            wanted = frame_id(request)
        except BadQuery as exc:
            return html("error.html", 400, message=str(exc))
        head = await reads(lambda r: r.frame_head(wanted, TEXT_SHOWN))
        if head is None:
            return html("error.html", 404, message=f"no frame {wanted}")
        return html(
            "frame.html",
            frame=row_view(head),
            head=head,
            opcode="text" if head.opcode == OPCODE_TEXT else "binary",
            payload=shown(head),
            raw=f"/frames/{head.id}/raw",
            session_frames=FrameQuery(session=head.session_id).link() if head.session_id else None,
        )

    return endpoint


def frame_raw(reads: Reader) -> Endpoint:
    """The frame's bytes as they crossed the wire, as a download no browser renders."""

    async def endpoint(request: Request) -> Response:
        try:
            wanted = frame_id(request)
        except BadQuery as exc:
            return api_error(400, str(exc))
        first = await reads(lambda r: r.frame_part(wanted, 0, RAW_PART))
        if first is None:
            return api_error(404, f"no frame {wanted}")

        async def parts(part: str | bytes) -> AsyncIterator[bytes]:
            at = 0
            while True:
                yield part.encode() if isinstance(part, str) else part
                if len(part) < RAW_PART:
                    return
                at += RAW_PART
                following = await reads(
                    partial(Recordings.frame_part, frame_id=wanted, start=at, count=RAW_PART)
                )
                if following is None:  # purged while it was sent: the download ends short
                    return
                part = following

        headers = {
            "Content-Disposition": f'attachment; filename="frame-{wanted}.bin"',
            "X-Content-Type-Options": "nosniff",
        }
        return StreamingResponse(
            parts(first), media_type="application/octet-stream", headers=headers
        )

    return endpoint


def routes(reads: Reader) -> list[Route]:
    return [
        Route("/frames", table_page(reads), methods=["GET"]),
        Route("/frames.jsonl", jsonl_download(reads), methods=["GET"]),
        Route("/frames/{frame_id}", frame_page(reads), methods=["GET"]),
        Route("/frames/{frame_id}/raw", frame_raw(reads), methods=["GET"]),
        Route("/api/frames", page_api(reads), methods=["GET"]),
    ]


def api(reads: Reader) -> dict[str, Endpoint]:
    """Session JSON by what follows the id: {"frames": ...}."""
    return {"frames": page_api(reads, of_session=True)}
