"""What a replay reads to tell a UI's reconnect from a second tab: which connections
took part in the session's conversation, and when its frames were recorded (through
:class:`~recorder.db.recordings.Recordings`, as every front end reads)."""

from __future__ import annotations

from recorder.db.recordings import FrameFilter, Recordings
from recorder.protocol.frames import IN
from recorder.protocol.story import Recording
from recorder.replay.plan import BROADCASTS


class TookPart:
    """Which proxied connections took part in the session's conversation, for
    :func:`~recorder.replay.plan.choose`: sent a request the recording attributes to
    the session (a spawn, a task, a stop, a status request), or were sent what the
    daemon sends only the client that asked (a stream, a task's reply,
    ``session_spawned``). Each is looked up when choose() asks, once, among the
    session's frames of that connection's lifetime; a watcher's are a few broadcasts,
    and a conversation's first frame settles it."""

    def __init__(self, reader: Recordings, session_id: str, recordings: list[Recording]) -> None:
        self.reader = reader
        self.session_id = session_id
        self._by_id = {r.id: r for r in recordings}
        self._known: dict[int, bool] = {}

    def __contains__(self, connection: object) -> bool:
        if not isinstance(connection, int) or connection not in self._by_id:
            return False
        if connection not in self._known:
            self._known[connection] = self._look_up(self._by_id[connection])
        return self._known[connection]

    def _look_up(self, r: Recording) -> bool:
        wanted = FrameFilter(
            session_id=self.session_id,
            connection_id=r.id,
            since_us=r.opened_us,
            until_us=None if r.closed_us is None else r.closed_us + 1,
        )
        # A connection that received only broadcasts, and sent nothing naming the
        # session, only watched.
        for frame in self.reader.frames(wanted):
            if frame.direction != IN or frame.type not in BROADCASTS:
                return True
        return False


def recorded_span(reader: Recordings, session_id: str) -> tuple[int, int] | None:
    """When the session's first and last recorded frames were received."""
    first = next(iter(reader.frames(FrameFilter(session_id=session_id, limit=1))), None)
    last = next(iter(reader.frames(FrameFilter(session_id=session_id, last=1))), None)
    if first is None or last is None:
        return None
    return first.received_at_us, last.received_at_us
