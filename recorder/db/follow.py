"""Following a recording as it grows: what `tail` and `replay --follow` read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from recorder.db.pages import FrameFilter
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

    def __init__(self, recordings: Recordings, f: FrameFilter, seen: int) -> None:
        self.recordings = recordings
        self.filter = f
        self.seen = seen
        self.lookback = 0 if recordings.backend.commits_ids_in_order else LOOKBACK
        self._given: set[int] = set()

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
        for frame in self.recordings.frames(
            replace(self.filter, after_id=after, through_id=newest)
        ):
            if self.lookback:
                if frame.id in self._given:
                    continue
                self._given.add(frame.id)
            yield frame
        self.seen = max(self.seen, newest)
        if self.lookback:
            self._forget(self.seen - self.lookback)
