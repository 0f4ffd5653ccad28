"""Frames as they are committed: the page (``/live``) and its event stream
(``/api/live``, server-sent events).

Each client's stream looks at the database once every POLL seconds, one short read
through the read library (:meth:`Recordings.live`), and hands out at most MOST_PER_LOOK
frames a look: behind a firehose it lags and catches up, losing none. An event's id is
its frame's id, so a client that reconnects with Last-Event-ID goes on after the last
frame it had, none lost or repeated; a ``cursor`` event says how far the stream has
looked when no frame matched, so that a reconnect does not look again. At most
MAX_CLIENTS streams at once (as ``replay --serve``), more are refused with 429.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from recorder.db.frame_reads import LiveCursor
from recorder.db.pages import FrameFilter
from recorder.db.recordings import Recordings
from recorder.db.rows import Frame
from recorder.db.session_ids import NoSuchSession
from recorder.protocol.frames import IN, OUT
from recorder.web.frames import number, row_view
from recorder.web.render import BadQuery, Endpoint, Reader, html

MAX_CLIENTS = 8
POLL = 0.5
MOST_PER_LOOK = 200
# The newest frames a stream may start with (``last``).
MOST_LAST = 200
# A comment (and the cursor) at least this often: proxies keep a quiet stream open.
KEEPALIVE = 15.0
# How long a browser waits before it reconnects, in milliseconds.
RETRY_MS = 2000


@dataclass(frozen=True)
class LiveQuery:
    """What a stream follows and where it starts: after the frame ``after`` (a
    reconnect's Last-Event-ID, or ``?after=``), else with the newest ``last``."""

    filter: FrameFilter
    after: int | None = None
    last: int = 0

    @classmethod
    def of(cls, request: Request) -> LiveQuery:
        params = request.query_params
        direction = params.get("direction") or None
        if direction not in (None, IN, OUT):
            raise BadQuery(f"direction: expected {IN} or {OUT}, got {direction[:40]!r}")
        f = FrameFilter(
            session_id=params.get("session") or None,
            type=params.get("type") or None,
            direction=direction,
        )
        resumed = request.headers.get("last-event-id") or params.get("after")
        after = number("Last-Event-ID", resumed) if resumed else None
        last = number("last", params["last"]) if params.get("last") else 0
        if last > MOST_LAST:
            raise BadQuery(f"last: at most {MOST_LAST}, got {last}")
        return cls(f, after, last)


def event(frame: Frame) -> str:
    """One frame as an event: its id, and what the page shows of it as one JSON line
    (JSON escapes every line break, so a payload cannot end the event)."""
    view = row_view(frame)
    del view["href"], view["connection_href"]
    return f"id: {frame.id}\ndata: {json.dumps(view)}\n\n"


def cursor_event(after: int) -> str:
    return f"event: cursor\nid: {after}\ndata: {after}\n\n"


def start(query: LiveQuery, recordings: Recordings) -> tuple[FrameFilter, list[Frame], LiveCursor]:
    f = recordings.named(query.filter)
    if query.after is not None:
        return f, [], LiveCursor(query.after, resumed=query.after)
    return f, *recordings.live_start(f, query.last)


async def events(reads: Reader, query: LiveQuery) -> AsyncIterator[str]:
    f, first, cursor = await reads(partial(start, query))
    yield f"retry: {RETRY_MS}\n\n" + "".join(event(frame) for frame in first)
    yield cursor_event(cursor.after)
    said = time.monotonic()
    while True:
        await asyncio.sleep(POLL)
        frames = await reads(lambda r: r.live(f, cursor, MOST_PER_LOOK))
        if frames:
            yield "".join(event(frame) for frame in frames)
            said = time.monotonic()
        elif time.monotonic() - said >= KEEPALIVE:
            yield ": still here\n\n" + cursor_event(cursor.after)
            said = time.monotonic()


class Slots:
    """The live streams open now, at most MAX_CLIENTS."""

    def __init__(self) -> None:
        self.open = 0


class Stream(StreamingResponse):
    """An event stream that gives its slot back however it ends (the client gone,
    the server stopping)."""

    def __init__(self, content: AsyncIterator[str], slots: Slots) -> None:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # The server stopping (its graceful timeout cancels what still runs): the
            # stream ends as a response ends, and the browser reconnects elsewhen.
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.slots.open -= 1


def stream(reads: Reader) -> Endpoint:
    slots = Slots()

    async def endpoint(request: Request) -> Response:
        try:
            query = LiveQuery.of(request)
            # The session named now, in one line: not once the stream has begun.
            await reads(lambda r: r.named(query.filter))
        except (BadQuery, NoSuchSession) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        if slots.open >= MAX_CLIENTS:
            return PlainTextResponse(
                f"{MAX_CLIENTS} live streams are open: try again later\n", status_code=429
            )
        slots.open += 1
        return Stream(events(reads, query), slots)

    return endpoint


def page(_reads: Reader) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        params = request.query_params
        return html("live.html", session=params.get("session", ""), type=params.get("type", ""))

    return endpoint


def routes(reads: Reader) -> list[Route]:
    return [
        Route("/live", page(reads), methods=["GET"]),
        Route("/api/live", stream(reads), methods=["GET"]),
    ]
