"""Which of a session's frames a replay plays, and when: pure, over small types.

A session can be carried by several connections: the passive link (status
broadcasts), one or more UIs through the proxy (the conversation: stream chunks,
tool calls, task replies), and after a reconnect more than one of each. By default
a replay plays the daemon-to-client frames of the conversation that created the
session (the proxied connection that sent its ``spawn_session``), followed across
that UI's reconnects (later conversations from the same host), plus the frames of
the session that only the link saw (while none of those conversations was open).
Without a creating conversation (a session the daemon started, or one spawned by
a client not using the proxy), every proxied conversation that overlapped the
session takes that place.

Timing: within a connection from the recorded monotonic clock (exact), across
connections from the receive times. A span with no recording connection is a
:class:`Cue` of its own (a gap), never collapsed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from recorder.protocol.frames import IN
from recorder.protocol.story import Gap, Recording


class ReplayFrame(NamedTuple):
    id: int
    connection_id: int
    seq: int
    direction: str
    received_us: int
    monotonic_ns: int
    type: str | None
    is_text: bool
    data: bytes
    # The database row it came from (for the JSONL contract), if any.
    row: Any = None


@dataclass(frozen=True)
class Choice:
    """The connections a replay plays from."""

    # Played whole (their daemon-to-client frames).
    conversations: frozenset[int]
    # When they were open: a link frame inside these spans is a duplicate.
    spans: tuple[tuple[int, int], ...]
    # Only this connection (``--connection``), or None.
    only: int | None = None

    def plays(self, frame: ReplayFrame, roles: dict[int, str]) -> bool:
        if frame.direction != IN:
            return False
        if self.only is not None:
            return frame.connection_id == self.only
        if frame.connection_id in self.conversations:
            return True
        if roles.get(frame.connection_id) != "link":
            return False
        at = frame.received_us
        return not any(opened <= at <= closed for opened, closed in self.spans)


def _host(addr: str | None) -> str | None:
    return addr.rpartition(":")[0] if addr else None


def choose(
    recordings: Sequence[Recording],
    creator: int | None,
    start_us: int,
    end_us: int,
    now_us: int,
    only: int | None = None,
) -> Choice:
    """The conversations to play for a session spanning [start, end]."""
    proxies = [r for r in recordings if r.role == "proxy"]
    if only is not None:
        return Choice(frozenset(), (), only)
    chosen: list[Recording]
    first = next((r for r in proxies if r.id == creator), None)
    if first is not None:
        chosen = [first] + [
            r
            for r in proxies
            if r.id != first.id
            and r.opened_us >= first.opened_us
            and r.opened_us <= end_us
            and _host(r.client_addr) == _host(first.client_addr)
        ]
    else:
        chosen = [
            r
            for r in proxies
            if r.opened_us <= end_us and (r.closed_us is None or r.closed_us >= start_us)
        ]
    spans = tuple((r.opened_us, r.closed_us if r.closed_us is not None else now_us) for r in chosen)
    return Choice(frozenset(r.id for r in chosen), spans)


@dataclass(frozen=True)
class Cue:
    """One step of a replay: a frame, or a gap, at ``t`` seconds of recorded time."""

    t: float
    frame: ReplayFrame | None = None
    gap: Gap | None = None
    # A gap before the first frame played ("before") or after the last ("after"):
    # marked, and no time of the replay's. "" for a gap between frames.
    edge: str = ""

    @property
    def at_us(self) -> int:
        if self.frame is not None:
            return self.frame.received_us
        assert self.gap is not None
        return self.gap.start_us


def timeline(frames: Iterable[ReplayFrame], gaps: Sequence[Gap]) -> Iterator[Cue]:
    """Frames and gaps merged by time, each with its recorded time (the first frame
    at 0).

    A gap between two frames counts as an event at its start, so the frame after it
    comes the gap's length later: the silence is kept, and marked (how much of it a
    player waits is the pace's: :mod:`recorder.replay.timing`). A gap before the first
    frame or after the last is marked at that frame's time: nothing happened in it
    that the replay could show, and a daemon's ``startedAt`` a year before the
    recording must not make a replay wait a year.
    """
    line = Timeline(gaps)
    for frame in frames:
        yield from line.add(frame)
    yield from line.end()


class Timeline:
    """:func:`timeline`, a frame at a time: for a player that reads its frames
    itself, as they are due (``--serve``)."""

    def __init__(self, gaps: Sequence[Gap]) -> None:
        self._pending = sorted(gaps, key=lambda gap: gap.start_us)
        self._g = 0
        self._t = 0.0
        self._last: ReplayFrame | None = None
        self._last_us: int | None = None

    def _advance(self, to_us: int) -> None:
        if self._last_us is not None:
            self._t += max(0.0, (to_us - self._last_us) / 1e6)

    def _reached(self, at_us: int) -> None:
        self._last_us = at_us if self._last_us is None else max(self._last_us, at_us)

    def add(self, frame: ReplayFrame) -> list[Cue]:
        """The gaps that began before ``frame``, then the frame."""
        cues = []
        while self._g < len(self._pending) and self._pending[self._g].start_us <= frame.received_us:
            gap = self._pending[self._g]
            self._g += 1
            if self._last_us is None:  # before the first frame: marked, not timed
                cues.append(Cue(self._t, gap=gap, edge="before"))
                continue
            self._advance(gap.start_us)
            self._last = None
            self._reached(gap.start_us)
            cues.append(Cue(self._t, gap=gap))
        last = self._last
        if last is not None and last.connection_id == frame.connection_id:
            self._t += max(0.0, (frame.monotonic_ns - last.monotonic_ns) / 1e9)
        else:
            self._advance(frame.received_us)
        # The latest time reached, not this frame's: a frame received before the one
        # played last (on another connection) plays at once, and the next pause must
        # not count that step back a second time.
        self._last = frame
        self._reached(frame.received_us)
        cues.append(Cue(self._t, frame=frame))
        return cues

    def end(self) -> list[Cue]:
        """The gaps after the last frame: marked at its time."""
        edge = "after" if self._last_us is not None else "before"
        cues = [Cue(self._t, gap=gap, edge=edge) for gap in self._pending[self._g :]]
        self._g = len(self._pending)
        return cues
