"""What the read library reads for ``recorder show``: a session's story, and the
recording connections around a session. Part of
:class:`recorder.db.recordings.Recordings`."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from recorder.db import pages
from recorder.db.pages import FrameFilter
from recorder.db.readonly import Reader, Row
from recorder.db.rows import Connection, Session
from recorder.protocol.frames import IN
from recorder.protocol.story import READ_TYPES, Recording, Story, StoryFrame, Teller, span
from recorder.protocol.tame import read_object, tamed
from recorder.protocol.timeline import LISTED, listed
from recorder.times import now_us

# Read one by one: the types whose object the story reads, and a task's reply, which it
# knows by its type and task id. The daemon's other frames are only counted.
ONE_BY_ONE = (*READ_TYPES, "task_completed")


class StoryReads:
    reader: Reader

    def story(
        self,
        session: Session,
        *,
        longest: int | None = None,
        tasks: Collection[str] | None = None,
    ) -> Story:
        """``recorder show``: a session's frames read once, through its index, a page at
        a time, with the entries of the sessions_list replies that named it, and folded
        into its story (``longest``, ``tasks``: see :class:`Teller`)."""
        teller = Teller(vars(session), longest=longest, tasks=tasks)
        course = teller.course

        def ended() -> bool:
            # Past its final status a listing tells nothing new, and a daemon lists an
            # ended session for as long as it runs: months of replies, read for nothing.
            return course.over and course.status == session.status

        frames = (
            self._story_frames(session),
            iter(self._counted(session)),
            self._listings(session, ended),
        )
        for frame in heapq.merge(*frames, key=lambda f: f.id):
            if frame.type != LISTED or not ended():  # one may have been read ahead
                teller.add(frame)
        start, end = span(vars(session))
        recordings = self.recordings_around(start, max(end or now_us(), session.last_seen_us))
        # The connections that carried the session's frames outside that span too (a
        # clock that jumped): the fold counted them.
        known = {r.id for r in recordings}
        recordings += self.recordings_of(sorted(set(teller.connections) - known))
        recordings.sort(key=lambda r: r.id)
        return teller.told(recordings, now_us())

    def _story_frames(self, session: Session) -> Iterator[StoryFrame]:
        """The frames the story reads one by one: those whose object it reads, those
        it knows by their type and task (a task's reply), and what the client sent."""
        wanted = ", ".join(f"'{t}'" for t in READ_TYPES)
        columns = (
            "id, connection_id, seq, direction, received_at_us, monotonic_ns, type, task_id, "
            f"size, CASE WHEN type IN ({wanted}) THEN payload END AS payload"
        )
        f = FrameFilter(session_id=session.id, read_types=ONE_BY_ONE)
        for r in pages.frames(self.reader, f, columns):
            payload = r["payload"]
            obj = (read_object(payload) or {}) if payload else None
            yield _story_frame(r, obj)

    def _counted(self, session: Session) -> list[StoryFrame]:
        """The daemon's other frames (stream chunks, mostly), which the story only
        counts: counted in SQL, per connection and type, a window of ids at a time (no
        statement holds a snapshot for long), each count at its first frame, in id
        order. A 100 000-chunk session folded in Python took half a second."""
        bounds = self.reader.rows(
            "SELECT min(id) AS lo, max(id) AS hi FROM frames WHERE session_id = :s",
            {"s": session.id},
        )
        lo, hi = (bounds[0]["lo"], bounds[0]["hi"]) if bounds else (None, None)
        if lo is None or hi is None:
            return []
        names = [f"t{i}" for i in range(len(ONE_BY_ONE))]
        listed = ", ".join(f":{n}" for n in names)
        sql = (
            "SELECT connection_id, type, count(*) AS n, min(id) AS id, "
            "min(received_at_us) AS at FROM frames WHERE session_id = :s "
            f"AND direction = 'in' AND (type IS NULL OR type NOT IN ({listed})) "
            "AND id >= :lo AND id < :hi GROUP BY connection_id, type"
        )
        params: dict[str, Any] = {"s": session.id, **dict(zip(names, ONE_BY_ONE, strict=True))}
        counts: dict[tuple[int, str | None], int] = {}
        # The windows come in id order: a key's first window holds its first frame.
        first: dict[tuple[int, str | None], tuple[int, int]] = {}
        for start in range(int(lo), int(hi) + 1, pages.ID_WINDOW):
            for r in self.reader.rows(sql, params | {"lo": start, "hi": start + pages.ID_WINDOW}):
                key = (int(r["connection_id"]), r["type"])
                counts[key] = counts.get(key, 0) + int(r["n"])
                first.setdefault(key, (int(r["id"]), int(r["at"])))
        return [
            StoryFrame(id_, cid, 0, IN, at, 0, type_, None, 0, None, counts[(cid, type_)])
            for (cid, type_), (id_, at) in sorted(first.items(), key=lambda item: item[1])
        ]

    def _listings(self, session: Session, ended: Callable[[], bool]) -> Iterator[StoryFrame]:
        """The sessions_list replies that named the session, each as a frame of its
        entry (:data:`~recorder.protocol.timeline.LISTED`), until ``ended()``. Through
        the index by type, over the span the recorder saw the session in (listings
        widen it too)."""
        columns = (
            "id, connection_id, seq, direction, received_at_us, monotonic_ns, type, task_id, "
            "size, payload"
        )
        f = FrameFilter(
            type=LISTED,
            direction=IN,
            since_us=session.first_seen_us,
            until_us=session.last_seen_us + 1,
            grep=session.id,
        )
        for r in pages.frames(self.reader, f, columns):
            if ended():
                return
            # A listing may name thousands of sessions: only this one's entry is kept.
            entry = listed(read_object(r["payload"] or "", deep=True), session.id)
            if entry is not None:
                yield _story_frame(r, {"session": tamed(entry)})

    def recordings_around(self, start: int, end: int) -> list[Recording]:
        """The connections that were up at some point of [start, end]."""
        sql = (
            "SELECT * FROM connections WHERE opened_at_us <= :end "
            "AND (closed_at_us IS NULL OR closed_at_us >= :start) ORDER BY id"
        )
        rows = self.reader.rows(sql, {"start": start, "end": end})
        return [_recording(Connection.of(r)) for r in rows]

    def recordings_of(self, ids: Iterable[int]) -> list[Recording]:
        """These connections (by id), as recordings."""
        wanted = sorted(set(ids))
        found: list[Recording] = []
        for at in range(0, len(wanted), 500):
            numbers = ", ".join(str(int(i)) for i in wanted[at : at + 500])
            rows = self.reader.rows(f"SELECT * FROM connections WHERE id IN ({numbers})")
            found += [_recording(Connection.of(r)) for r in rows]
        return found


def _story_frame(r: Row, obj: dict[str, Any] | None) -> StoryFrame:
    """A story frame of a row of the story's columns, and its object."""
    return StoryFrame(
        r["id"],
        r["connection_id"],
        r["seq"],
        r["direction"],
        r["received_at_us"],
        r["monotonic_ns"],
        r["type"],
        r["task_id"],
        r["size"],
        obj,
    )


def _recording(c: Connection) -> Recording:
    return Recording(
        c.id,
        c.role,
        c.url,
        c.client_addr,
        c.opened_at_us,
        c.closed_at_us,
        c.close_code,
        c.closed_by,
        c.error,
    )
