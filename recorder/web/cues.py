"""The replay page's cues, pure: where a player stands in a session (a cursor it can
carry in a URL), the cues it plays as JSON, and a search through the text it shows.

A cursor is the id of the last frame read and the :class:`~recorder.replay.plan.Mark`
of the timeline there, so the page after it costs what the first did, and its times
go on from where the page before left them: the cues of all pages are those of one
pass of :class:`~recorder.replay.plan.Timeline`. It is opaque to the browser, and
read back strictly: anything but what :func:`encode` wrote is refused.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from recorder.protocol.frames import IN
from recorder.protocol.story import Gap
from recorder.replay.plan import Cue, Mark, ReplayFrame, Timeline
from recorder.replay.text import Shown, show

VERSION = "1"
_INT = re.compile(r"-?[0-9]{1,19}\Z")
_NAT = re.compile(r"[0-9]{1,19}\Z")
_FLOAT = re.compile(r"[0-9]{1,17}(\.[0-9]{1,20})?(e[-+]?[0-9]{1,3})?\Z")
# Search: the longest query, and the text kept around a match to show it in.
QUERY_CHARS = 200
CONTEXT = 40


class BadCursor(ValueError):
    """A cursor this module did not write."""


class Cursor(NamedTuple):
    """Where a replay stands: after frame id ``after``, its timeline at ``mark``."""

    after: int
    mark: Mark


START = Cursor(0, Mark(0, 0.0, None, 0, None))


def encode(cursor: Cursor) -> str:
    m = cursor.mark
    fields = [cursor.after, m.gaps, repr(m.t), m.last_connection, m.last_monotonic_ns, m.last_us]
    text = VERSION + ":" + ":".join("" if f is None else str(f) for f in fields)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(text: str) -> Cursor:
    """The cursor :func:`encode` wrote as ``text``; :class:`BadCursor` for anything else."""
    if not text or len(text) > 200 or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise BadCursor("cursor: not one of ours")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor: not one of ours") from None
    fields = raw.split(":")
    if len(fields) != 7 or fields[0] != VERSION:
        raise BadCursor("cursor: not one of ours")
    _, after, gaps, t, connection, monotonic, last_us = fields
    if not (_NAT.match(after) and _NAT.match(gaps) and _FLOAT.match(t) and _INT.match(monotonic)):
        raise BadCursor("cursor: not one of ours")
    if (connection and not _INT.match(connection)) or (last_us and not _INT.match(last_us)):
        raise BadCursor("cursor: not one of ours")
    seconds = float(t)
    if not math.isfinite(seconds):
        raise BadCursor("cursor: not one of ours")
    mark = Mark(
        int(gaps),
        seconds,
        int(connection) if connection else None,
        int(monotonic),
        int(last_us) if last_us else None,
    )
    return Cursor(int(after), mark)


def is_output(frame: ReplayFrame) -> bool:
    """A stream chunk the daemon sent: text, never a marker (known without parsing it)."""
    return frame.direction == IN and frame.type == "stream_chunk"


def cue_json(cue: Cue, shown: Shown, before: Cursor | None = None) -> dict[str, Any]:
    """A cue as the player reads it: ``kind`` "" for output text, else the marker's;
    a gap says whether it lies between frames (``edge`` "") and is waited; a marker
    carries the cursor to play from it (``before``)."""
    found: dict[str, Any] = {
        "t": cue.t,
        "id": cue.frame.id if cue.frame is not None else None,
        "kind": shown.kind,
        "text": shown.label if shown.is_marker else shown.output,
    }
    if cue.gap is not None:
        found["edge"] = cue.edge
    if shown.is_marker and before is not None:
        found["cursor"] = encode(before)
    return found


@dataclass
class Shows:
    """What one frame (or the end) added to the replay: its cues as shown, and the
    cursor from which a player shows them again."""

    before: Cursor
    cues: list[tuple[Cue, Shown]]


class Walk:
    """A session's cues from a cursor on: one :class:`Timeline`, shown as text."""

    def __init__(self, gaps: list[Gap], at: Cursor = START) -> None:
        self.line = Timeline(gaps, at.mark)
        self.after = at.after

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.after, self.line.mark())

    def add(self, frame: ReplayFrame, output: bool = True) -> list[Shows]:
        """What ``frame`` adds: each gap that began before it, then itself, as shown,
        each with the cursor to show it from; without ``output``, a stream chunk is
        left out unparsed."""
        # The frames between the one before and this one are not shown: reading on from
        # the id before this one's is reading on from the one before.
        found = []
        while True:
            before = Cursor(frame.id - 1, self.line.mark())
            gap = self.line.gap_before(frame)
            if gap is None:
                break
            found.append(Shows(before, _shown([gap])))
        cue = self.line.add(frame)  # no gap is left before it: only its own cue
        self.after = frame.id
        if output or not is_output(frame):
            found.append(Shows(before, _shown(cue)))
        return found

    def end(self) -> Shows:
        """The gaps after the last frame, once the session has ended."""
        return Shows(self.cursor, _shown(self.line.end()))

    @property
    def t(self) -> float:
        return self.line.mark().t


def _shown(cues: list[Cue]) -> list[tuple[Cue, Shown]]:
    return [(cue, s) for cue in cues if (s := show(cue)) is not None]


def shown_text(shown: Shown) -> str:
    """A cue as the page shows it: output as it came, a marker as a line of its own."""
    return f"\n[{shown.kind}] {shown.label}\n" if shown.is_marker else shown.output


class Finder:
    """Where a query occurs, case-insensitively, in the text a replay shows: across
    the cues a match may span, each found where it starts (the cue, by its ``ref``).

    It holds a few dozen characters whatever the session's length."""

    def __init__(self, query: str) -> None:
        self.size = len(query)
        self.pattern = re.compile(re.escape(query), re.IGNORECASE)
        self.keep = max(self.size - 1, CONTEXT)
        self.tail = ""  # the text shown last, up to self.keep characters
        self.end = 0  # offset of the end of self.tail in the whole text
        # (offset where a cue's text starts, its ref) for the cues the tail holds.
        self.starts: deque[tuple[int, Any]] = deque()
        self.next_from = 0  # matches do not overlap
        # Matches still gathering the text after them: [found, chars still wanted].
        self.open: list[list[Any]] = []

    def feed(self, text: str, ref: Any) -> list[dict[str, Any]]:
        """The text of the next cue; the matches it completes, each as ``{"ref",
        "before", "match", "after"}`` (``after`` grows as text comes)."""
        if not text:
            return []
        for pending in self.open:
            pending[0]["after"] += text[: pending[1]]
            pending[1] -= min(pending[1], len(text))
        self.open = [p for p in self.open if p[1] > 0]
        base = self.end - len(self.tail)
        self.starts.append((self.end, ref))
        buffer = self.tail + text
        found = []
        at = max(0, self.next_from - base, len(self.tail) - self.size + 1)
        while (hit := self.pattern.search(buffer, at)) is not None:
            start = base + hit.start()
            owner = next(r for offset, r in reversed(self.starts) if offset <= start)
            after = buffer[hit.end() : hit.end() + CONTEXT]
            match = {
                "ref": owner,
                "before": buffer[max(0, hit.start() - CONTEXT) : hit.start()],
                "match": hit.group(),
                "after": after,
            }
            found.append(match)
            if len(after) < CONTEXT:
                self.open.append([match, CONTEXT - len(after)])
            at = hit.end()
            self.next_from = base + at
        self.end += len(text)
        self.tail = buffer[-self.keep :]
        first_kept = self.end - len(self.tail)
        # Keep the start of the cue the tail begins in, for a match starting there.
        while len(self.starts) > 1 and self.starts[1][0] <= first_kept:
            self.starts.popleft()
        return found

    def close(self) -> None:
        self.open = []
