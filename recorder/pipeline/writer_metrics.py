"""What the writer line has committed, summed for the service's /metrics.

Each answer to a batch says how many frames and bytes it committed per
(connection, direction); :class:`WriterMetrics` adds them up by role (link or
proxy) with the commit latencies, and :mod:`recorder.service.metrics` renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Upper bounds of the commit latency histogram, in seconds.
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class WriterMetrics:
    """What the writer line reports with each answer, summed for /metrics."""

    roles: dict[int, str] = field(default_factory=dict)
    # (direction, role) -> [frames, bytes]
    frames: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    batches: int = 0
    commit_buckets: list[int] = field(default_factory=lambda: [0] * len(COMMIT_BUCKETS))
    commit_seconds: float = 0.0
    last_frame_us: int | None = None

    def committed(
        self, tally: dict[tuple[int, str], tuple[int, int]], seconds: float, last_us: int
    ) -> None:
        """One committed batch: its frames and bytes per (connection, direction), how
        long its answer took, and when its last frame was received."""
        self.batches += 1
        self.commit_seconds += seconds
        for i, bound in enumerate(COMMIT_BUCKETS):
            if seconds <= bound:
                self.commit_buckets[i] += 1
        for (cid, direction), (n, size) in tally.items():
            slot = self.frames.setdefault((direction, self.roles.get(cid, "other")), [0, 0])
            slot[0] += n
            slot[1] += size
        self.last_frame_us = last_us
