"""Frames as a browser reads them: a page of a filter by key in either direction, one
frame's head, a frame in parts, and the frames committed since a cursor.

Every read is bounded by the page, not the database: a page stops at a number of
rows and of bytes, and a filter no index serves (direction, connection, grep, a
moment) scans at most ``SCAN_IDS`` ids per page, saying where it stopped so the next
page scans on from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from recorder.db import pages
from recorder.db.pages import HANDOVER_SLACK_US, PAGE_BYTES, FrameFilter, first_id_at
from recorder.db.readonly import Reader, first_row
from recorder.db.rows import FRAME_COLUMNS, Frame

# What a list shows of a frame's text: the rest stays in the database.
PREVIEW_CHARS = 200
HEAD_COLUMNS = FRAME_COLUMNS.replace(
    "payload, payload_bytes",
    f"substr(payload, 1, {PREVIEW_CHARS}) AS payload, NULL AS payload_bytes",
)
# Ids one page of a filter no index serves scans, at most: 5 of the pages module's
# windows, a few tens of milliseconds on SQLite.
SCAN_IDS = 100_000
# Ids a live cursor reads again behind it where ids commit out of order (the
# follower's LOOKBACK, recorder.db.follow).
LOOKBACK = 20_000
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class FramePage:
    """One page of frames in id order, with the keys of the pages beside it."""

    frames: list[Frame]
    # ``after=`` of the next page; None: none yet.
    later: int | None
    # ``before=`` of the previous page; None: this is the first.
    earlier: int | None


@dataclass
class LiveCursor:
    """Where a live reader is: frames up to ``after`` were handed out or looked past;
    ``given``: ids handed out in the window read again (out-of-order commits)."""

    after: int
    given: set[int] = field(default_factory=set)
    # A stream resumed after this id: what the window read again holds up to it was
    # handed out before, and is not again.
    resumed: int = 0


def scans(f: FrameFilter) -> bool:
    """Whether no index serves ``f`` (its cost would follow the table, so it is bounded)."""
    return f.session_id is None and f.task is None and f.type is None


class FrameReads:
    reader: Reader

    def frame_page(
        self,
        f: FrameFilter,
        *,
        after: int | None = None,
        before: int | None = None,
        rows: int = 100,
        heads: bool = False,
    ) -> FramePage:
        """Up to ``rows`` frames of ``f`` (and about PAGE_BYTES at most) after the id
        ``after``, or the last ones before the id ``before``. ``heads``: each text
        cut to PREVIEW_CHARS and no bytes (for a list)."""
        newest = pages.newest_frame_id(self.reader)
        if before is None:
            return self._forward(f, after, newest, rows, heads)
        upto = min(before - 1, newest)
        lower = max(0, upto - SCAN_IDS) if scans(f) else None
        found = list(
            pages.frames(
                self.reader, replace(f, after_id=lower, through_id=upto, last=rows + 1), "id, size"
            )
        )
        earlier: int | None = lower + 1 if lower else None
        start = upto + 1
        if len(found) > rows:
            start = earlier = int(found[1]["id"])
        elif found:
            start = int(found[0]["id"])
        page = self._forward(replace(f, through_id=upto), start - 1, upto, rows, heads)
        later = page.later if page.later is not None else (upto if upto < newest else None)
        return FramePage(page.frames, later, earlier)

    def _forward(
        self, f: FrameFilter, after: int | None, newest: int, rows: int, heads: bool
    ) -> FramePage:
        lower = after or 0
        upto = newest if f.through_id is None else min(f.through_id, newest)
        if scans(f):
            if f.since_us is not None and lower < upto:
                since = f.since_us - HANDOVER_SLACK_US
                lower = max(lower, first_id_at(self.reader, since, lower, upto) - 1)
            upto = min(upto, lower + SCAN_IDS)
        columns = HEAD_COLUMNS if heads else FRAME_COLUMNS
        wanted = replace(f, after_id=lower, through_id=upto, limit=rows + 1)
        taken: list[Frame] = []
        held = 0
        more = False
        for frame in _frames(self.reader, wanted, columns):
            if len(taken) == rows or (taken and held >= PAGE_BYTES):
                more = True
                break
            taken.append(frame)
            held += frame.size
        if more:
            later: int | None = taken[-1].id
        else:
            later = upto if upto < newest and f.through_id is None else None
        earlier = (taken[0].id if taken else lower + 1) if after else None
        return FramePage(taken, later, earlier)

    def frame_head(self, frame_id: int, most: int) -> Frame | None:
        """The frame ``frame_id`` with its text or bytes cut to ``most`` characters or
        bytes (its ``size`` says how long it is)."""
        columns = FRAME_COLUMNS.replace(
            "payload, payload_bytes",
            f"substr(payload, 1, {int(most)}) AS payload, "
            f"substr(payload_bytes, 1, {int(most)}) AS payload_bytes",
        )
        row = first_row(
            self.reader, f"SELECT {columns} FROM frames WHERE id = :id", {"id": frame_id}
        )
        return None if row is None else Frame._make(row)

    def frame_part(self, frame_id: int, start: int, count: int) -> str | bytes | None:
        """``count`` characters (of a text) or bytes of the frame from ``start`` (0 is
        the first); None: no such frame. Shorter than asked: the frame's end."""
        row = first_row(
            self.reader,
            f"SELECT substr(payload, {int(start) + 1}, {int(count)}) AS text, "
            f"substr(payload_bytes, {int(start) + 1}, {int(count)}) AS data "
            "FROM frames WHERE id = :id",
            {"id": frame_id},
        )
        if row is None:
            return None
        if row["text"] is not None:
            return str(row["text"])
        return bytes(row["data"] or b"")

    def live(self, f: FrameFilter, cursor: LiveCursor, most: int) -> list[Frame]:
        """The heads of at most ``most`` frames of ``f`` committed since ``cursor``, in
        id order, each once; the cursor moves past them. Behind a firehose it lags and
        catches up, losing none."""
        newest = pages.newest_frame_id(self.reader)
        behind = 0 if self.reader.backend.commits_ids_in_order else LOOKBACK
        if newest <= cursor.after and not behind:
            return []
        wanted = replace(f, after_id=max(0, cursor.after - behind), through_id=newest)
        taken: list[Frame] = []
        last_read = newest
        for frame in _frames(self.reader, wanted, HEAD_COLUMNS):
            if frame.id in cursor.given:
                continue
            if frame.id <= cursor.resumed:
                cursor.given.add(frame.id)
                continue
            if len(taken) == most:
                last_read = taken[-1].id
                break
            taken.append(frame)
        if behind:
            cursor.given.update(frame.id for frame in taken)
        cursor.after = max(cursor.after, last_read)
        cursor.resumed = 0
        cursor.given = {i for i in cursor.given if i > cursor.after - behind}
        return taken

    def live_start(self, f: FrameFilter, last: int) -> tuple[list[Frame], LiveCursor]:
        """The heads of the newest ``last`` frames of ``f``, and a cursor after them."""
        newest = pages.newest_frame_id(self.reader)
        cursor = LiveCursor(newest)
        if not last:
            return [], cursor
        lower = max(0, newest - SCAN_IDS) if scans(f) else None
        wanted = replace(f, after_id=lower, through_id=newest, last=last)
        taken = list(_frames(self.reader, wanted, HEAD_COLUMNS))
        if not self.reader.backend.commits_ids_in_order:
            cursor.given = {frame.id for frame in taken}
        return taken, cursor


def _frames(reader: Reader, f: FrameFilter, columns: str) -> Iterator[Frame]:
    for page in pages.frame_pages(reader, f, columns):
        yield from (Frame._make(row) for row in page)
