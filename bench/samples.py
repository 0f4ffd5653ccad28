"""What the cleanup benchmarks (``bench/purge.py``, ``bench/compact.py``) read off
their polls of the database: :class:`Sample` rows, and the rates, windows and stalls
they measure, interpolated between samples.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from itertools import pairwise

from harness import BenchError


@dataclass
class Sample:
    t: float  # wall clock, seconds since the epoch
    committed: int  # firehose rows committed (max(id) above the copy's last row)
    left: int  # the finished session's frame_count; -1 once its row is gone


def count_at(samples: list[Sample], t: float) -> float:
    """Firehose rows committed at wall time ``t``, interpolated between two samples."""
    for a, b in pairwise(samples):
        if a.t <= t <= b.t:
            if b.t == a.t:
                return float(b.committed)
            return a.committed + (b.committed - a.committed) * (t - a.t) / (b.t - a.t)
    return float(samples[-1].committed if t > samples[-1].t else samples[0].committed)


def rate_within(samples: list[Sample], lo: float, hi: float) -> tuple[float, float]:
    """(committed rows/s between ``lo`` and ``hi``, the window's length); NaN if empty."""
    if not hi > lo:  # also when either is NaN
        return float("nan"), 0.0
    return (count_at(samples, hi) - count_at(samples, lo)) / (hi - lo), hi - lo


def steady_window(samples: list[Sample], frames: int) -> tuple[float, float]:
    """When the firehose passed 10 % and 90 % (the baseline's steady rate, interpolated)."""

    def crossing(n: int) -> float:
        for a, b in pairwise(samples):
            if a.committed < n <= b.committed:
                return a.t + (b.t - a.t) * (n - a.committed) / (b.committed - a.committed)
        raise BenchError(f"the samples never crossed {n} committed rows")

    return crossing(frames // 10), crossing(frames * 9 // 10)


def longest_stall(samples: list[Sample], frames: int) -> float:
    """The longest time between two polls that saw new rows, from 1 % to 99 %."""
    lo, hi = frames // 100, frames * 99 // 100
    inside = [
        b.t
        for a, b in pairwise(samples)
        if b.committed != a.committed and lo <= b.committed and a.committed <= hi
    ]
    return max((b - a for a, b in pairwise(inside)), default=0.0)


def stall_within(samples: list[Sample], lo: float, hi: float) -> float:
    """The longest time without a new committed row within [lo, hi] (poll resolution)."""
    changed = [b.t for a, b in pairwise(samples) if b.committed != a.committed]
    edges = [lo, *(t for t in changed if lo < t < hi), hi]
    return max(b - a for a, b in pairwise(edges))


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # NaN: a run with no such window
    return statistics.median(values) if values else float("nan")


def rate(fps: float) -> str:
    return f"{fps:,.0f}" if fps == fps else "-"  # NaN: no such window in the run
