"""What a replay reads to tell a UI's reconnect from a second tab: which connections
asked about the session, and when its frames were recorded (through
:class:`~recorder.db.recordings.Recordings`, as every front end reads)."""

from __future__ import annotations

from recorder.db.recordings import FrameFilter, Recordings
from recorder.protocol.frames import OUT
from recorder.protocol.story import Recording


class Asked:
    """Which proxied connections sent a request naming the session (one the
    recording attributes to it), for :func:`~recorder.replay.plan.choose`: each is
    looked up when it is asked about, once, among the session's frames of that
    connection's lifetime only."""

    def __init__(self, reader: Recordings, session_id: str, recordings: list[Recording]) -> None:
        self.reader = reader
        self.session_id = session_id
        self._by_id = {r.id: r for r in recordings}
        self._known: dict[int, bool] = {}

    def __contains__(self, connection: object) -> bool:
        if not isinstance(connection, int) or connection not in self._by_id:
            return False
        if connection not in self._known:
            r = self._by_id[connection]
            wanted = FrameFilter(
                session_id=self.session_id,
                direction=OUT,
                connection_id=connection,
                since_us=r.opened_us,
                until_us=None if r.closed_us is None else r.closed_us + 1,
                limit=1,
            )
            self._known[connection] = any(True for _ in self.reader.frames(wanted))
        return self._known[connection]


def recorded_span(reader: Recordings, session_id: str) -> tuple[int, int] | None:
    """When the session's first and last recorded frames were received."""
    first = next(iter(reader.frames(FrameFilter(session_id=session_id, limit=1))), None)
    last = next(iter(reader.frames(FrameFilter(session_id=session_id, last=1))), None)
    if first is None or last is None:
        return None
    return first.received_at_us, last.received_at_us
