"""How long a replay waits before each cue: speed, idle cap, a window; and when
each cue is due on a player's clock. Pure: the players pass their clock in.

A gap in the recording between two frames is waited at most ``--max-idle`` when it
is given, else at most :data:`GAP_WAIT`: its marker says how long it really was, and
nobody wants to watch an hour of nothing. A gap before the first frame or after the
last takes no time at all (:func:`recorder.replay.plan.timeline`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from recorder.replay.plan import Cue

# Seconds of recorded time a gap between frames is waited, at most, without --max-idle.
GAP_WAIT = 5.0


@dataclass(frozen=True)
class Pace:
    speed: float = 1.0
    # Each pause of recorded time is capped at this many seconds (before speed).
    max_idle: float | None = None
    instant: bool = False
    # A window of recorded time, in seconds from the first cue, or as epoch µs.
    start: float | None = None
    stop: float | None = None
    start_us: int | None = None
    stop_us: int | None = None

    def inside(self, cue: Cue) -> bool | None:
        """True to play, False to skip, None when past the window (stop)."""
        if self.stop is not None and cue.t > self.stop:
            return None
        if self.stop_us is not None and cue.at_us > self.stop_us:
            return None
        if self.start is not None and cue.t < self.start:
            return False
        return not (self.start_us is not None and cue.at_us < self.start_us)


def paced(cues: Iterable[Cue], pace: Pace) -> Iterator[tuple[float, Cue]]:
    """Each cue in the window, with the wall-clock seconds to wait before it."""
    pacer = Pacer(pace)
    for cue in cues:
        pause = pacer.pause(cue)
        if pacer.past:
            return
        if pause is not None:
            yield pause, cue


class Pacer:
    """:func:`paced`, a cue at a time: for a player that must also see the cues
    before the window (``--serve`` keeps the sessions they show)."""

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self.past = False  # past the window: nothing more plays
        self._previous: float | None = None
        # The cue before was a gap between frames: the pause after it is its silence.
        self._after_gap = False

    def pause(self, cue: Cue) -> float | None:
        """The wall-clock seconds to wait before ``cue``; None when it is not played
        (before the window, or past it: then :attr:`past` is set)."""
        inside = self.pace.inside(cue)
        if inside is None:
            self.past = True
        if not inside:
            return None
        pause = 0.0 if self._previous is None else max(0.0, cue.t - self._previous)
        self._previous = cue.t
        if self.pace.max_idle is not None:
            pause = min(pause, self.pace.max_idle)
        elif self._after_gap:
            pause = min(pause, GAP_WAIT)
        self._after_gap = cue.gap is not None and not cue.edge
        return 0.0 if self.pace.instant else pause / self.pace.speed


def output_times(cues: Iterable[tuple[float, Cue]]) -> Iterator[tuple[float, Cue]]:
    """The same cues, each with the time it is shown at since the start (for files)."""
    at = 0.0
    for pause, cue in cues:
        at += pause
        yield at, cue


@dataclass
class Due:
    """When the next cue is due, in seconds of a player's clock.

    Each pause counts from when the cue before was due, not from when playing it
    ended: otherwise the time spent writing each cue (and, with ``--follow``,
    polling the database) adds up, and a long replay falls ever further behind.
    """

    at: float

    def wait(self, pause: float, now: float) -> float:
        """The seconds to wait at ``now`` for a cue ``pause`` after the one before
        (0 when it is already late: a late player catches up)."""
        self.at += pause
        return max(0.0, self.at - now)

    def restart(self, now: float) -> None:
        """Count on from ``now`` after a wait the recording does not account for (a
        client's request, a pause key): the cues after it must not rush to catch up."""
        self.at = now


def on_time(
    timed: Iterable[tuple[float, Cue]],
    clock: Callable[[], float],
    wait: Callable[[float], bool],
) -> Iterator[Cue]:
    """Each cue when it is due: ``wait(seconds)`` lets them pass and returns True when
    it was held longer (paused) or let go early (stepped), to count on from then."""
    due: Due | None = None
    for pause, cue in timed:
        now = clock()
        if due is None:
            due = Due(now)
        if wait(due.wait(pause, now)):
            due.restart(clock())
        yield cue
