"""A recorded session's trace, read through the read library: the function the
backfill and the live export share. The spans are plain data
(:class:`~recorder.otel.spans.SessionTrace`); sending them is :mod:`recorder.otel.send`."""

from __future__ import annotations

from recorder.db.recordings import Recordings
from recorder.db.rows import Session
from recorder.otel.build import Shape, root_times, session_trace
from recorder.otel.fold import TraceFold
from recorder.otel.settings import OtelConfig
from recorder.otel.spans import SessionTrace
from recorder.protocol.story import gaps
from recorder.times import now_us


def shape_of(settings: OtelConfig, content: bool | None = None) -> Shape:
    """What traces carry by ``[otel]`` (``content``: the command line's say)."""
    return Shape(settings.content if content is None else content, settings.max_attribute_bytes)


def read_trace(recordings: Recordings, session: Session | str, shape: Shape) -> SessionTrace:
    """The session's trace (``session``: its row, or its id), its times the recorded
    ones: reading it twice gives the same spans, the same ids."""
    row = recordings.session(session) if isinstance(session, str) else session
    fold = TraceFold()
    for frame in recordings.trace_frames(row):
        fold.add(frame)
    folded = fold.done()
    most = shape.longest if shape.content else 0
    chunks = [recordings.chunks(row.id, run, most) for run in folded.streams]
    start_ns, end_ns = root_times(row, folded)
    start_us, end_us = start_ns // 1000, end_ns // 1000
    found = gaps(start_us, end_us, recordings.recordings_around(start_us, end_us), now_us())
    return session_trace(row, folded, chunks, found, shape)
