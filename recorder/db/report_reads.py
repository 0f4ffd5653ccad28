"""What the read library reads for ``recorder report``: a window of time's sessions,
the frames the report folds (tool calls, errors, the sessions' metrics), the link
connections, cleanup runs and daily rollup rows in it, and the daemon's token count at
its ends. Part of :class:`recorder.db.recordings.Recordings`.

Every read walks an index (sessions by last_seen_us, frames by type and id, cleanup
runs by started_us, frame_days by day): the cost follows the window's frames of those
types, not the database.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any, NamedTuple

from recorder.db import pages
from recorder.db.pages import HANDOVER_SLACK_US, FrameFilter, first_id_at
from recorder.db.readonly import Reader, first_row
from recorder.db.rows import CleanupRun, Connection, Instance, Session, Tally
from recorder.protocol.tame import read_object

# The frame types the report reads the object of, each through the index by type.
REPORT_TYPES = (
    "tool_call_start",
    "tool_call_result",
    "error",
    "task_failed",
    "session_status_update",
    "session_spawned",
)
REPORT_COLUMNS = "id, connection_id, session_id, received_at_us, monotonic_ns, type, size, payload"


class ReportFrame(NamedTuple):
    """A frame the report reads: where and when it was recorded, and its object."""

    id: int
    connection_id: int
    session_id: str | None
    received_us: int
    monotonic_ns: int
    type: str
    # The parsed JSON object ({} for a frame that is not one).
    obj: dict[str, Any]


class DaemonTokens(NamedTuple):
    """The daemon's own count of tokens (its metrics.totalTokensUsed) when it last said
    it, and when that was; the count is None where it said something else."""

    tokens: int | float | None
    at_us: int


class ReportReads:
    reader: Reader

    def sessions_between(self, since_us: int, until_us: int) -> list[Session]:
        """The sessions seen in [since, until): last seen from ``since`` on, first seen
        before ``until``. Through the index on last_seen_us."""
        sql = (
            "SELECT * FROM sessions WHERE last_seen_us >= :since AND first_seen_us < :until "
            "ORDER BY first_seen_us, id"
        )
        return [
            Session.of(r) for r in self.reader.rows(sql, {"since": since_us, "until": until_us})
        ]

    def report_frames(self, since_us: int, until_us: int) -> Iterator[ReportFrame]:
        """The frames of :data:`REPORT_TYPES` received in [since, until), in recording
        order: each type read through the index by type, a page at a time, merged by id."""
        streams = [self._typed(kind, since_us, until_us) for kind in REPORT_TYPES]
        yield from heapq.merge(*streams, key=lambda f: f.id)

    def _typed(self, kind: str, since_us: int, until_us: int) -> Iterator[ReportFrame]:
        f = FrameFilter(type=kind, since_us=since_us, until_us=until_us)
        for r in pages.frames(self.reader, f, REPORT_COLUMNS):
            payload = r["payload"]
            yield ReportFrame(
                int(r["id"]),
                int(r["connection_id"]),
                r["session_id"],
                int(r["received_at_us"]),
                int(r["monotonic_ns"]),
                kind,
                (read_object(payload) or {}) if payload else {},
            )

    def links_between(self, since_us: int, until_us: int) -> list[Connection]:
        """The link connections that may have been up in [since, until), oldest first:
        opened before ``until`` and closed (if ever) from ``since`` on. The connections
        table grows with reconnects, not with frames."""
        sql = (
            "SELECT * FROM connections WHERE role = 'link' AND opened_at_us < :until "
            "AND (closed_at_us IS NULL OR closed_at_us >= :since) ORDER BY id"
        )
        rows = self.reader.rows(sql, {"since": since_us, "until": until_us})
        return [Connection.of(r) for r in rows]

    def first_links(self) -> dict[str, int]:
        """When each recorder instance first linked to a daemon here."""
        sql = (
            "SELECT instance, min(opened_at_us) AS first_us FROM connections "
            "WHERE role = 'link' GROUP BY instance"
        )
        return {str(r["instance"]): int(r["first_us"]) for r in self.reader.rows(sql)}

    def instances_seen(self) -> list[Instance]:
        """What each recorder last said about itself (its heartbeat)."""
        return [Instance.of(r) for r in self.reader.rows("SELECT * FROM instances ORDER BY name")]

    def cleanup_runs_between(self, since_us: int, until_us: int) -> list[CleanupRun]:
        """The cleanup runs started in [since, until), oldest first."""
        sql = (
            "SELECT * FROM cleanup_runs WHERE started_us >= :since AND started_us < :until "
            "ORDER BY started_us, id"
        )
        rows = self.reader.rows(sql, {"since": since_us, "until": until_us})
        return [CleanupRun.of(r) for r in rows]

    def days_between(self, since_us: int, until_us: int) -> list[Tally]:
        """Frames and bytes recorded per UTC day, of the days [since, until) touches."""
        day = 86_400_000_000
        sql = (
            "SELECT day_us, sum(frames) AS frames, sum(bytes) AS bytes FROM frame_days "
            "WHERE day_us >= :first AND day_us < :until GROUP BY day_us ORDER BY day_us"
        )
        rows = self.reader.rows(sql, {"first": since_us - since_us % day, "until": until_us})
        return [Tally.of(r) for r in rows]

    def daemon_tokens(
        self, since_us: int, until_us: int
    ) -> tuple[DaemonTokens | None, DaemonTokens | None]:
        """The daemon's token count as it last said it before ``since`` and before
        ``until`` (None: it never said it): two point reads through the index by type."""
        newest = pages.newest_frame_id(self.reader)

        def said(moment: int) -> DaemonTokens | None:
            through = first_id_at(self.reader, moment + HANDOVER_SLACK_US, 0, newest) - 1
            return self._daemon_said(through, moment) if through > 0 else None

        return said(since_us), said(until_us)

    def _daemon_said(self, through_id: int, before_us: int) -> DaemonTokens | None:
        sql = (
            "SELECT received_at_us, payload FROM frames WHERE type = 'daemon_status_update' "
            "AND id <= :u AND received_at_us < :before ORDER BY id DESC LIMIT 1"
        )
        row = first_row(self.reader, sql, {"u": through_id, "before": before_us})
        if row is None:
            return None
        status = (read_object(row["payload"] or "") or {}).get("status")
        metrics = status.get("metrics") if isinstance(status, dict) else None
        total = metrics.get("totalTokensUsed") if isinstance(metrics, dict) else None
        number = total if isinstance(total, int | float) and not isinstance(total, bool) else None
        return DaemonTokens(number, int(row["received_at_us"]))
