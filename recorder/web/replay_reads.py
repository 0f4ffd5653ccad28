"""What the replay page reads, each a short read of one session through the replay's
own machinery (:mod:`recorder.replay.source`): a page of cues after a cursor, the
session's markers and checkpoints, and a search of its text.

Each reads the session's frames in keyset pages after an id, so a page costs what it
reads, wherever it starts; the markers and the search read the whole session, once,
and hold no more than what they return.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from recorder.db.recordings import Recordings
from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.replay.source import Session, open_session, told_pages
from recorder.web.cues import Cursor, Finder, Shows, Walk, cue_json, encode, shown_text

# A page stops once it holds this many cues, or has read this many pages of frames
# (of up to 1000 each): a seek far ahead reads on in several requests.
PAGE_CUES = 500
PAGE_READS = 20
# A checkpoint (a cursor to seek from) every this many pages read.
CHECKPOINT_PAGES = 2
# The markers listed at most (tool calls thinned first), and the matches a search finds.
MAX_MARKERS = 2000
MAX_MATCHES = 100


def _ended(reader: Recordings, session: Session) -> bool:
    return reader.session_status(session.id) in TERMINAL_STATUSES


def _shows(
    reader: Recordings, session: Session, walk: Walk, output: bool = True
) -> Iterator[Shows | None]:
    """What each frame after the walk's cursor adds (without ``output``, stream chunks
    are not even parsed); None after each page read."""
    for told, last in told_pages(reader, session, walk.after):
        for frame in told:
            yield from walk.add(frame, output)
        walk.after = last
        yield None


def page(reader: Recordings, wanted: str, at: Cursor, since: float | None) -> dict[str, Any]:
    """The cues after ``at`` (those before ``since`` seconds, if given, skipped): up to
    about :data:`PAGE_CUES`, and the cursor to read on from. ``more``: frames are
    left; ``ended``: the session had ended before this read (so when nothing is left,
    nothing more will come: ``done``)."""
    session = open_session(reader, wanted)
    ended = _ended(reader, session)
    walk = Walk(session.gaps, at)
    cues: list[dict[str, Any]] = []
    reads = 0
    more = False
    for shows in _shows(reader, session, walk):
        if shows is None:
            reads += 1
            if len(cues) >= PAGE_CUES or reads >= PAGE_READS:
                more = True
                break
            continue
        cues += _cues(shows, since)
    if not more and ended:
        cues += _cues(walk.end(), since)
    return {
        "cues": cues,
        "cursor": encode(walk.cursor),
        "t": walk.t,
        "more": more,
        "ended": ended,
        "done": ended and not more,
    }


def _cues(shows: Shows, since: float | None) -> list[dict[str, Any]]:
    return [
        cue_json(cue, shown, shows.before)
        for cue, shown in shows.cues
        if since is None or cue.t >= since
    ]


def markers(reader: Recordings, wanted: str) -> dict[str, Any]:
    """The session's markers (tool calls, status changes, errors, gaps, what was
    asked...) with their times and cursors; checkpoints to seek to a time from; and
    its length in recorded seconds. One pass, parsing no stream chunk."""
    session = open_session(reader, wanted)
    ended = _ended(reader, session)
    walk = Walk(session.gaps)
    found: list[tuple[float, str, str, str]] = []
    checkpoints = [(0.0, encode(walk.cursor))]
    reads = 0
    for shows in _shows(reader, session, walk, output=False):
        if shows is None:
            reads += 1
            if reads % CHECKPOINT_PAGES == 0:
                checkpoints.append((walk.t, encode(walk.cursor)))
            continue
        for cue, shown in shows.cues:
            if shown.is_marker:
                found.append((cue.t, shown.kind, shown.label, encode(shows.before)))
    if ended:
        end = walk.end()
        found += [(c.t, s.kind, s.label, encode(end.before)) for c, s in end.cues]
    kept = _thinned(found, MAX_MARKERS)
    return {
        "markers": [{"t": t, "kind": k, "text": label, "cursor": c} for t, k, label, c in kept],
        "total": len(found),
        "checkpoints": [{"t": t, "cursor": c} for t, c in checkpoints],
        "duration": walk.t,
        "ended": ended,
    }


def _thinned(
    found: list[tuple[float, str, str, str]], limit: int
) -> list[tuple[float, str, str, str]]:
    """At most ``limit`` of the markers, in order: every one but tool calls first (an
    error, a status, a gap is rare and says most), then tool calls evenly spread."""
    if len(found) <= limit:
        return found
    others = [i for i, m in enumerate(found) if m[1] != "tool"]
    tools = [i for i, m in enumerate(found) if m[1] == "tool"]
    if len(others) >= limit:
        keep = others[:limit]
    else:
        room = limit - len(others)
        keep = others + [tools[k * len(tools) // room] for k in range(room)]
    return [found[i] for i in sorted(keep)]


def search(reader: Recordings, wanted: str, query: str) -> dict[str, Any]:
    """Where ``query`` occurs in the text the replay shows (markers' lines included),
    case-insensitively, a match maybe spanning chunks: up to :data:`MAX_MATCHES`, each
    with its time, the cursor to play from the cue it starts in, and its context."""
    session = open_session(reader, wanted)
    walk = Walk(session.gaps)
    finder = Finder(query)
    matches: list[dict[str, Any]] = []
    for shows in _shows(reader, session, walk):
        if shows is None:
            if len(matches) >= MAX_MATCHES:
                break
            continue
        for cue, shown in shows.cues:
            ref = (cue.t, shows.before)
            matches += finder.feed(shown_text(shown), ref)
    if len(matches) < MAX_MATCHES and _ended(reader, session):
        end = walk.end()
        for cue, shown in end.cues:
            matches += finder.feed(shown_text(shown), (cue.t, end.before))
    finder.close()
    out = []
    for m in matches[:MAX_MATCHES]:
        t, before = m.pop("ref")
        out.append({"t": t, "cursor": encode(before), **m})
    # At the bound it stopped looking: there may be more.
    return {"matches": out, "truncated": len(matches) >= MAX_MATCHES}
