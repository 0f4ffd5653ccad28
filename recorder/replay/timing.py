"""How long a replay waits before each cue: speed, idle cap, a window. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from recorder.replay.plan import Cue


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
    previous: float | None = None
    for cue in cues:
        inside = pace.inside(cue)
        if inside is None:
            return
        if not inside:
            continue
        pause = 0.0 if previous is None else max(0.0, cue.t - previous)
        previous = cue.t
        if pace.max_idle is not None:
            pause = min(pause, pace.max_idle)
        yield (0.0 if pace.instant else pause / pace.speed), cue


def output_times(cues: Iterable[tuple[float, Cue]]) -> Iterator[tuple[float, Cue]]:
    """The same cues, each with the time it is shown at since the start (for files)."""
    at = 0.0
    for pause, cue in cues:
        at += pause
        yield at, cue
