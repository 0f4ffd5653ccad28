"""How long each recorder's link to the daemon was up in a window, and the gaps when it
was not. Pure, over the link connections (:class:`recorder.db.rows.Connection`).

Each connection is up from its opening to its close, or to the next one's opening
when it was never closed (a recorder killed with its row open) or closed after it,
as :meth:`recorder.db.stats_reads.StatsReads.link_spans` counts them. The newest,
left open, is up until now while its recorder beats, else until its last heartbeat.
The gaps are the story's (:func:`recorder.protocol.story.gaps`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from recorder.db.rows import Connection
from recorder.protocol.kept import Kept
from recorder.protocol.story import KEEP, Gap, Recording, gaps

# Shorter gaps (a reconnect) count against the uptime but are not listed.
MIN_GAP_US = 1_000_000
# A heartbeat older than this: the recorder is gone (recorder.service.report.STALE_US).
STALE_US = 20_000_000


@dataclass(frozen=True)
class LinkUptime:
    """One recorder instance's link over the window (from its first link on, if later)."""

    instance: str
    connections: int
    start_us: int
    end_us: int
    up_us: int
    # Gaps of MIN_GAP_US or longer: the first and last KEEP of them, how many in all,
    # and the longest.
    gaps: list[Gap] = field(default_factory=list)
    gap_count: int = 0
    longest_gap_us: int = 0
    connected: bool = False

    @property
    def covered_us(self) -> int:
        return max(0, self.end_us - self.start_us)

    @property
    def share(self) -> float | None:
        return None if not self.covered_us else min(1.0, self.up_us / self.covered_us)


def link_uptimes(
    links: Sequence[Connection],
    first_links: Mapping[str, int],
    heartbeats: Mapping[str, int],
    since_us: int,
    now_us: int,
) -> list[LinkUptime]:
    """Each instance's :class:`LinkUptime` over [since, now): ``links`` are the link
    connections that may have been up then (oldest first), ``first_links`` when each
    instance first linked, ``heartbeats`` each one's last heartbeat."""
    mine: dict[str, list[Connection]] = {name: [] for name in first_links}
    for link in links:
        mine.setdefault(link.instance, []).append(link)
    found = []
    for name, own in sorted(mine.items()):
        start = max(since_us, first_links.get(name, since_us))
        if start >= now_us:
            continue
        found.append(_uptime(name, own, heartbeats.get(name), start, now_us))
    return found


def _uptime(
    name: str, links: list[Connection], heartbeat: int | None, start: int, now: int
) -> LinkUptime:
    spans: list[Recording] = []
    connected = False
    for i, link in enumerate(links):
        later = links[i + 1].opened_at_us if i + 1 < len(links) else None
        end = link.closed_at_us
        if later is not None and (end is None or end > later):
            end = later
        elif end is None:
            connected = heartbeat is None or now - heartbeat < STALE_US
            end = now if connected else max(link.opened_at_us, min(heartbeat or now, now))
        spans.append(Recording(link.id, "link", link.url, None, link.opened_at_us, end, *_NONE))
    down = gaps(start, now, spans, now)
    listed = [g for g in down if g.end_us - g.start_us >= MIN_GAP_US]
    kept: Kept[Gap] = Kept(KEEP)
    for gap in listed:
        kept.add(gap)
    return LinkUptime(
        name,
        len(links),
        start,
        now,
        (now - start) - sum(g.end_us - g.start_us for g in down),
        kept.items,
        kept.total,
        max((g.end_us - g.start_us for g in listed), default=0),
        connected,
    )


_NONE = (None, None, None)
