"""Which of a session's frames a replay plays, and when: pure, over small types.

A session can be carried by several connections: the passive link (status
broadcasts), one or more UIs through the proxy (the conversation: requests, stream
chunks, tool calls, task replies), and after a reconnect more than one of each. A
replay plays one conversation: that of the UI that created the session (the proxied
connection that sent its ``spawn_session``), followed across that UI's reconnects,
plus the frames of the session that only the link saw (while none of those
conversations was open). It plays the daemon's frames and the UI's requests.

A reconnect is told from a second browser tab by more than its address (a second tab
from the same machine has the same one): it opened after the conversation before it
had closed, not beside it (or, for one lost rather than closed, while its loss was
still unnoticed: the daemon's broadcasts went to both meanwhile, and the lost one's
copies are not played), and it took part in the conversation: it asked
about the session (sent a request the recording attributes to it), or was sent what
the daemon sends only the client that asked (a stream, a task's reply). A tab that only watched got
the status broadcasts every client gets, and nothing else: its copies are never
played. Without a creating conversation (a session the daemon started, one spawned
by a client not using the proxy, or a spawn the recording could not attribute), the
first proxied connection that took part leads; when none did and no link was
recording, the UIs' copies are all there is, played one connection after another.

Timing: within a connection from the recorded monotonic clock (exact), across
connections from the receive times. A span with no recording connection is a
:class:`Cue` of its own (a gap), never collapsed; one before the first frame played
or after the last is marked at the frame's time, taking none.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

from recorder.protocol.frames import IN, OUT
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

    # Played whole (their daemon-to-client frames, and the requests the UI sent).
    conversations: frozenset[int]
    # When they were open: a link frame inside these spans is a duplicate.
    spans: tuple[tuple[int, int], ...]
    # Only this connection (``--connection``), or None.
    only: int | None = None
    # A conversation lost, not closed, whose reconnect opened before the loss was
    # noticed: connection -> when the reconnect opened. The daemon's broadcasts from
    # then on went to both: the reconnect's copies are played.
    superseded: dict[int, int] = field(default_factory=dict)

    def carries(self, frame: ReplayFrame) -> bool:
        """Whether ``frame`` is on a played conversation, and no copy of one played."""
        if frame.connection_id not in self.conversations:
            return False
        since = self.superseded.get(frame.connection_id)
        return since is None or frame.received_us < since or frame.type not in BROADCASTS

    def plays(self, frame: ReplayFrame, roles: dict[int, str]) -> bool:
        """Whether ``frame`` is one of the daemon's frames the replay plays."""
        if frame.direction != IN:
            return False
        if self.only is not None:
            return frame.connection_id == self.only
        if frame.connection_id in self.conversations:
            return self.carries(frame)
        if roles.get(frame.connection_id) != "link":
            return False
        at = frame.received_us
        return not any(opened <= at <= closed for opened, closed in self.spans)

    def asks(self, frame: ReplayFrame, roles: dict[int, str]) -> bool:
        """Whether ``frame`` is a request the UI of a played conversation sent (the
        link's requests are the recorder's own, not the conversation's)."""
        if frame.direction != OUT or roles.get(frame.connection_id) == "link":
            return False
        return self.carries(frame) or frame.connection_id == self.only

    def tells(self, frame: ReplayFrame, roles: dict[int, str]) -> bool:
        """Whether a replay shows ``frame``: the daemon's side, or what was asked."""
        return self.plays(frame, roles) or self.asks(frame, roles)


# What the daemon sends every client: a second client's copies of these are copies.
BROADCASTS = frozenset({"session_status_update", "daemon_status_update"})


def _host(addr: str | None) -> str | None:
    return addr.rpartition(":")[0] if addr else None


# A UI that closed its connection says so (1000, or 1001 when the page goes away).
CLEAN_CLOSES = (1000, 1001)
# One that vanished (a network change, a laptop's sleep) is noticed by the proxy's
# keepalive up to 40 s later (websockets pings every 20 s and waits 20 s for the
# pong), and its reconnect may open before that: this much earlier still follows it.
LOST_SLACK_US = 60_000_000


def _follows(r: Recording, last: Recording) -> bool:
    """Whether ``r`` opened after ``last`` closed (not beside it), or, when ``last``
    was lost rather than closed, within the time its loss took to notice."""
    if last.closed_us is None or r.opened_us <= last.opened_us:
        return False
    if r.opened_us >= last.closed_us:
        return True
    lost = last.close_code not in CLEAN_CLOSES
    return lost and r.opened_us >= last.closed_us - LOST_SLACK_US


def choose(
    recordings: Sequence[Recording],
    creator: int | None,
    start_us: int,
    end_us: int,
    now_us: int,
    only: int | None = None,
    took_part: Container[int] = frozenset(),
) -> Choice:
    """The conversations to play for a session spanning [start, end]: the creator's
    (``creator``, the connection that sent its spawn), then each reconnect of it.

    ``took_part`` holds the proxied connections that took part in the session's
    conversation: sent a request naming it, or were sent what only the client that
    asked gets (a container that may look each up when asked: only candidates are)."""
    if only is not None:
        return Choice(frozenset(), (), only)
    up = [
        r
        for r in recordings
        if r.opened_us <= end_us and (r.closed_us is None or r.closed_us >= start_us)
    ]
    proxies = sorted((r for r in up if r.role == "proxy"), key=lambda r: (r.opened_us, r.id))
    lead = next((r for r in proxies if r.id == creator), None)
    if lead is None:
        lead = next((r for r in proxies if r.id in took_part), None)
    if lead is None and proxies and not any(r.role == "link" for r in up):
        # No link recorded it and no UI asked: the UIs' copies are its only record,
        # played one after another, never two beside each other.
        return _played([r for r in proxies if r.id != proxies[0].id], [proxies[0]], now_us)
    chosen = [] if lead is None else [lead]
    host = _host(lead.client_addr) if lead is not None else None
    candidates = [r for r in proxies if _host(r.client_addr) == host]
    return _played(candidates, chosen, now_us, took_part)


def _played(
    candidates: list[Recording],
    chosen: list[Recording],
    now_us: int,
    took_part: Container[int] | None = None,
) -> Choice:
    """``chosen``, followed by each candidate that opened after the last one played
    (and, unless ``took_part`` is None, took part in the conversation)."""
    for r in candidates:
        if chosen and _follows(r, chosen[-1]) and (took_part is None or r.id in took_part):
            chosen.append(r)  # ``in took_part`` last: it may be a lookup
    spans = tuple((r.opened_us, r.closed_us if r.closed_us is not None else now_us) for r in chosen)
    superseded = {
        r.id: after.opened_us
        for r, after in pairwise(chosen)
        if r.closed_us is not None and after.opened_us < r.closed_us
    }
    return Choice(frozenset(r.id for r in chosen), spans, superseded=superseded)


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


class Mark(NamedTuple):
    """Where a :class:`Timeline` stands between two frames: all it needs to go on
    later, from a new instance (a web player's next page)."""

    # Gaps already placed (an index into the session's gaps, by start).
    gaps: int
    t: float
    # The frame played last (its connection and monotonic clock), unless a gap came
    # after it; the latest receive time reached.
    last_connection: int | None
    last_monotonic_ns: int
    last_us: int | None


class Timeline:
    """:func:`timeline`, a frame at a time: for a player that reads its frames
    itself, as they are due (``--serve``)."""

    def __init__(self, gaps: Sequence[Gap], at: Mark | None = None) -> None:
        self._pending = sorted(gaps, key=lambda gap: gap.start_us)
        self._g = 0
        self._t = 0.0
        self._last: ReplayFrame | None = None
        self._last_us: int | None = None
        if at is not None:
            self._g, self._t, self._last_us = min(at.gaps, len(self._pending)), at.t, at.last_us
            if at.last_connection is not None:
                # Only its connection and clock count for what follows.
                self._last = ReplayFrame(
                    0, at.last_connection, 0, IN, 0, at.last_monotonic_ns, None, False, b""
                )

    def mark(self) -> Mark:
        """Where it stands now: ``Timeline(gaps, at=mark)`` goes on from here."""
        last = self._last
        return Mark(
            self._g,
            self._t,
            last.connection_id if last is not None else None,
            last.monotonic_ns if last is not None else 0,
            self._last_us,
        )

    def _advance(self, to_us: int) -> None:
        if self._last_us is not None:
            self._t += max(0.0, (to_us - self._last_us) / 1e6)

    def _reached(self, at_us: int) -> None:
        self._last_us = at_us if self._last_us is None else max(self._last_us, at_us)

    def add(self, frame: ReplayFrame) -> list[Cue]:
        """The gaps that began before ``frame``, then the frame."""
        cues = []
        while (gap_cue := self.gap_before(frame)) is not None:
            cues.append(gap_cue)
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

    def gap_before(self, frame: ReplayFrame) -> Cue | None:
        """The next gap that began before ``frame``, if any, placed (:meth:`add`
        places them all: a player that marks where each cue starts takes them one by
        one)."""
        if self._g >= len(self._pending) or self._pending[self._g].start_us > frame.received_us:
            return None
        gap = self._pending[self._g]
        self._g += 1
        if self._last_us is None:  # before the first frame: marked, not timed
            return Cue(self._t, gap=gap, edge="before")
        self._advance(gap.start_us)
        self._last = None
        self._reached(gap.start_us)
        return Cue(self._t, gap=gap)

    def end(self) -> list[Cue]:
        """The gaps after the last frame: marked at its time."""
        edge = "after" if self._last_us is not None else "before"
        cues = [Cue(self._t, gap=gap, edge=edge) for gap in self._pending[self._g :]]
        self._g = len(self._pending)
        return cues
