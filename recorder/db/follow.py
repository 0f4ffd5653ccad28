"""Following a recording as it grows: what `tail` and `replay --follow` read."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from recorder.db.pages import FrameFilter
from recorder.db.readonly import first_row
from recorder.db.rows import Frame

if TYPE_CHECKING:
    from recorder.db.recordings import Recordings

# Ids a follower reads again behind what it has seen, where ids commit out of order:
# several recorders' batches in flight at once (a few batches of 2 000 each).
LOOKBACK = 20_000


class Follower:
    """Frames committed since the last look, each once, in id order. Where ids commit
    in order, from the last id seen; where they do not (PostgreSQL shared by several
    recorders: a batch given ids before another's may commit after it), a window of
    ids behind is read again and what was handed out already is skipped."""

    def __init__(
        self, recordings: Recordings, f: FrameFilter, seen: int, *, late_spawn: bool = False
    ) -> None:
        self.recordings = recordings
        self.filter = f
        self.seen = seen
        self.lookback = 0 if recordings.backend.commits_ids_in_order else LOOKBACK
        self._given: set[int] = set()
        # Following one session (``late_spawn``: `tail`): its spawn_session request is
        # given its session only when session_spawned comes, long after it was
        # committed and looked past; it is handed out then, before that reply. A replay
        # plays in recording order and has it already, or never will.
        self._spawn_due = late_spawn and f.session_id is not None

    def printed(self, frame_id: int) -> None:
        """A frame handed out before following began."""
        if self.lookback:
            self._given.add(frame_id)
            if len(self._given) > 2 * self.lookback:
                self._forget(max(self._given) - self.lookback)

    def _forget(self, floor: int) -> None:
        self._given = {i for i in self._given if i > floor}

    def new(self) -> Iterator[Frame]:
        """One look: what was committed since the last, in id order."""
        newest = self.recordings.newest_frame_id()
        if newest <= self.seen and not self.lookback:
            return
        after = max(0, self.seen - self.lookback)
        late = self._attributed_spawn(after, newest) if self._spawn_due else []
        fresh = self.recordings.frames(replace(self.filter, after_id=after, through_id=newest))
        for frame in itertools.chain(late, fresh):
            if self.lookback:
                if frame.id in self._given:
                    continue
                self._given.add(frame.id)
            yield frame
        self.seen = max(self.seen, newest)
        if self.lookback:
            self._forget(self.seen - self.lookback)

    def _attributed_spawn(self, after: int, newest: int) -> list[Frame]:
        """The session's spawn_session request, once the session_spawned that gives it
        its session is among the frames since the last look (the writer attributes
        the request in the commit that stores the reply), when it lies behind them."""
        session = self.filter.session_id
        unindexed = self.recordings.backend.unindexed("session_id")
        reader = self.recordings.reader
        spawned = first_row(
            reader,
            f"SELECT id FROM frames WHERE type = 'session_spawned' AND {unindexed} = :s "
            "AND id > :after AND id <= :upto ORDER BY id LIMIT 1",
            {"s": session, "after": after, "upto": newest},
        )
        if spawned is None:
            return []
        self._spawn_due = False  # a session is spawned once
        # Through the index by type, back from the reply: its request is among the
        # newest spawns, where the session's own index would walk all its frames.
        request = first_row(
            reader,
            f"SELECT id FROM frames WHERE type = 'spawn_session' AND {unindexed} = :s "
            "AND id < :reply ORDER BY id DESC LIMIT 1",
            {"s": session, "reply": spawned["id"]},
        )
        if request is None or request["id"] > after:
            return []  # none recorded, or the read of the new frames has it
        at = int(request["id"])
        # Through the follower's filter: --type, --direction, --grep still apply.
        return list(self.recordings.frames(replace(self.filter, after_id=at - 1, through_id=at)))
