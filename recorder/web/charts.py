"""The console's charts, laid out as numbers for a template to draw as inline SVG: a
session's timeline strip (its frames over time, one lane per type, the gaps shaded)
and bars per day. Pure: no I/O, nothing recorded is interpreted (names are text the
template escapes), and no script or style attribute is needed to show them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from recorder.db.strip_reads import StripCount
from recorder.protocol.story import Gap
from recorder.protocol.tame import one_line

# The strip's time buckets, and the lanes drawn (the most frequent types; the rest
# share one lane, so that a daemon's thousand made-up types stay one strip).
BUCKETS = 200
LANES = 10
OTHERS = "(other types)"
NONE = "(none)"
# Its geometry, in the SVG's own units (it scales to the page's width).
WIDTH = 1000
LABELS = 170
LANE_HEIGHT = 18
AXIS_HEIGHT = 22
# The colours cycle through this many classes (stats.css).
COLOURS = 8
# The steps an axis may tick at, in seconds: the first that gives at most TICKS.
STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600]
STEPS += [43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400]
TICKS = 8
DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Lane:
    name: str
    # The whole type, for the lane's tooltip: the name drawn may be cut short.
    title: str
    y: float
    colour: int
    frames: int
    bars: list[Bar] = field(default_factory=list)


@dataclass(frozen=True)
class Strip:
    """A session's frames over [start, end): the SVG's size, where its plot is, the
    lanes, the gaps shaded across them, and the time axis below."""

    width: int
    height: int
    plot_x: int
    plot_width: int
    axis_y: int
    lanes: list[Lane]
    shades: list[Bar]
    ticks: list[Tick]
    start: str
    end: str


def strip(
    counts: Iterable[StripCount],
    gaps: Iterable[Gap],
    start_us: int,
    end_us: int,
    buckets: int = BUCKETS,
) -> Strip:
    """The strip of ``counts`` (:meth:`Recordings.frame_strip` over [start, end) in
    ``buckets``), with ``gaps`` shaded."""
    end_us = max(end_us, start_us + 1_000_000)  # a session of one moment: one second
    per_type: dict[str, dict[int, int]] = {}
    for c in counts:
        lane = per_type.setdefault(NONE if c.type is None else c.type, {})
        lane[c.bucket] = lane.get(c.bucket, 0) + c.frames
    ranked = sorted(per_type, key=lambda t: (-sum(per_type[t].values()), t))
    if len(ranked) > LANES:
        rest: dict[int, int] = {}
        for name in ranked[LANES - 1 :]:
            for b, n in per_type[name].items():
                rest[b] = rest.get(b, 0) + n
        per_type = {**{t: per_type[t] for t in ranked[: LANES - 1]}, OTHERS: rest}
        ranked = [*ranked[: LANES - 1], OTHERS]
    plot = WIDTH - LABELS
    step = plot / buckets
    lanes = [
        _lane(name, i, per_type[name], step, buckets, (start_us, end_us))
        for i, name in enumerate(ranked)
    ]
    axis_y = max(1, len(lanes)) * LANE_HEIGHT
    shades = []
    for gap in gaps:
        left, right = max(gap.start_us, start_us), min(gap.end_us, end_us)
        if right <= left:
            continue
        x = LABELS + (left - start_us) * plot / (end_us - start_us)
        w = max(1.0, (right - left) * plot / (end_us - start_us))
        said = f"gap, nothing recording: {gap.seconds:.1f} s from {_moment(gap.start_us)}"
        shades.append(Bar(round(x, 1), 0, round(w, 1), axis_y, said + f" to {_moment(gap.end_us)}"))
    ticks = [
        Tick(round(LABELS + (at - start_us) * plot / (end_us - start_us), 1), label)
        for at, label in axis(start_us, end_us)
    ]
    return Strip(
        WIDTH,
        axis_y + AXIS_HEIGHT,
        LABELS,
        plot,
        axis_y,
        lanes,
        shades,
        ticks,
        _moment(start_us),
        _moment(end_us),
    )


def _lane(
    name: str, index: int, counts: dict[int, int], step: float, buckets: int, span: tuple[int, int]
) -> Lane:
    top = max(counts.values(), default=0)
    y = index * LANE_HEIGHT
    room = LANE_HEIGHT - 3
    start, end = span
    bars = []
    for b in sorted(counts):
        n = counts[b]
        if n <= 0 or not 0 <= b < buckets:
            continue
        # By the square root of the lane's busiest bucket: one burst would flatten
        # the rest of the lane to nothing on a linear scale.
        height = max(1.5, room * (n / top) ** 0.5)
        at = start + (end - start) * b // buckets
        title = f"{one_line(name, 80)}: {n:,} frame{'s' if n != 1 else ''} from {_moment(at)}"
        bars.append(
            Bar(
                round(LABELS + b * step, 1),
                round(y + LANE_HEIGHT - 1 - height, 1),
                round(step, 2),
                round(height, 1),
                title,
            )
        )
    shown = one_line(name, 24, say_length=False)
    return Lane(shown, name, y, index % COLOURS, sum(counts.values()), bars)


def axis(start_us: int, end_us: int) -> list[tuple[int, str]]:
    """Round moments in [start, end] to label a time axis with, at most TICKS."""
    span_s = (end_us - start_us) / 1e6
    step = next((s for s in STEPS if span_s / s <= TICKS), STEPS[-1])
    while span_s / step > TICKS:
        step *= 2
    step_us = step * 1_000_000
    first = -(-start_us // step_us) * step_us
    long = end_us - start_us > DAY_US
    fine = step < 60
    out = []
    at = first
    while at <= end_us:
        out.append((at, _label(at, long=long, seconds=fine)))
        at += step_us
    return out


def _label(us: int, *, long: bool, seconds: bool) -> str:
    moment = _datetime(us)
    if moment is None:
        return ""
    if long:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%H:%M:%S" if seconds else "%H:%M")


def _moment(us: int) -> str:
    moment = _datetime(us)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else f"{us} µs"


def _datetime(us: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(us / 1e6, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None  # a clock far off: no calendar moment to write


# --- bars per day ----------------------------------------------------------------

DAYS = 92
MIN_SLOTS = 31
CHART_HEIGHT = 120


@dataclass(frozen=True)
class DayChart:
    """Bars of one number per day over a run of days (none missing), tallest first
    scaled to the chart's height."""

    width: int
    height: int
    bars: list[Bar]
    ticks: list[Tick]
    most: int


def day_chart(days: Sequence[tuple[int, int]], unit: str, most_days: int = DAYS) -> DayChart:
    """``days``: (day's start in µs, value), oldest first; the last ``most_days`` days
    up to the newest are drawn, a day without frames as no bar."""
    if not days:
        return DayChart(WIDTH, CHART_HEIGHT + AXIS_HEIGHT, [], [], 0)
    last = days[-1][0]
    first = max(days[0][0], last - (most_days - 1) * DAY_US)
    slots = (last - first) // DAY_US + 1
    shown = {d: v for d, v in days if d >= first}
    top = max(shown.values(), default=0) or 1
    # A few days of frames are narrow bars at the right, not a wall of colour.
    step = WIDTH / max(slots, MIN_SLOTS)
    left = WIDTH - slots * step
    bars = []
    for i in range(slots):
        day = first + i * DAY_US
        value = shown.get(day, 0)
        if value <= 0:
            continue
        height = max(1.0, CHART_HEIGHT * value / top)
        title = f"{_day(day)}: {value:,} {unit}"
        x = round(left + i * step + step * 0.1, 1)
        bars.append(
            Bar(x, round(CHART_HEIGHT - height, 1), round(step * 0.8, 2), round(height, 1), title)
        )
    marks = sorted({0, slots // 2, slots - 1})
    ticks = [Tick(round(left + i * step + step / 2, 1), _day(first + i * DAY_US)) for i in marks]
    return DayChart(WIDTH, CHART_HEIGHT + AXIS_HEIGHT, bars, ticks, max(shown.values()))


def _day(us: int) -> str:
    moment = _datetime(us)
    return moment.strftime("%Y-%m-%d") if moment is not None else str(us)
