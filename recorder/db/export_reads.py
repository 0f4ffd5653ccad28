"""What the OpenTelemetry live export reads: the sessions due to an endpoint, from its
cursor (:mod:`recorder.db.otel_exports`). Part of
:class:`recorder.db.recordings.Recordings`.

A session is due once it has had its final status for ``export_after``, or, without
one, has not been seen for that long: when it became due is its ``finished_us``, else
its ``last_seen_us`` (:func:`due_at`). The sessions are read in that order, from the
newest one the endpoint took, less :data:`LOOKBACK_US`: a session whose frames the
writer committed late (a long queue) is found behind the cursor, and those already
sent are left out by their cursor row. Each read walks an index (the finished by
``finished_us``, the others by ``last_seen_us``, both partial) from there: its cost
follows the sessions due since, not the database.
"""

from __future__ import annotations

from typing import Any

from recorder.db.readonly import Reader, first_row
from recorder.db.rows import Session

# How far behind its cursor the export looks again: more than the writer's queue is
# ever behind the frames it records.
LOOKBACK_US = 120 * 1_000_000

_NOT_SENT = (
    "NOT EXISTS (SELECT 1 FROM otel_exports e WHERE e.endpoint_key = :key AND e.session_id = s.id)"
)


def due_at(session: Session) -> int:
    """When the session became due to the export, but for its delay: when its final
    status was recorded, else when it was last seen."""
    return session.finished_us if session.finished_us is not None else session.last_seen_us


class ExportReads:
    reader: Reader

    def export_start(self, endpoint_key: str) -> int | None:
        """Where the endpoint's next look starts (when a session became due); None for
        an endpoint the cursor does not know."""
        sql = (
            "SELECT p.since_us, (SELECT max(due_us) FROM otel_exports "
            "WHERE endpoint_key = :key) AS newest FROM otel_endpoints p "
            "WHERE p.endpoint_key = :key"
        )
        row = first_row(self.reader, sql, {"key": endpoint_key})
        if row is None:
            return None
        since = int(row["since_us"])
        if row["newest"] is None:
            return since
        return max(since, int(row["newest"]) - LOOKBACK_US)

    def due_exports(
        self,
        endpoint_key: str,
        now_us: int,
        export_after_us: int,
        limit: int,
        instance: str | None = None,
    ) -> list[Session]:
        """Up to ``limit`` sessions due to the endpoint and not sent to it, in the
        order they became due (:func:`due_at`, then id); ``instance``: only those
        that recorder recorded. None before the endpoint is started."""
        start = self.export_start(endpoint_key)
        if start is None:
            return []
        params: dict[str, Any] = {
            "key": endpoint_key,
            "lo": start,
            "cut": now_us - export_after_us,
            "n": limit,
        }
        own = ""
        if instance is not None:
            own = " AND s.instance = :instance"
            params["instance"] = instance
        finished = (
            "SELECT s.* FROM sessions s WHERE s.finished_us >= :lo AND s.finished_us <= :cut"
            f"{own} AND {_NOT_SENT} ORDER BY s.finished_us, s.id LIMIT :n"
        )
        idle = (
            "SELECT s.* FROM sessions s WHERE s.finished_us IS NULL "
            f"AND s.last_seen_us >= :lo AND s.last_seen_us <= :cut{own} AND {_NOT_SENT} "
            "ORDER BY s.last_seen_us, s.id LIMIT :n"
        )
        found = [Session.of(r) for sql in (finished, idle) for r in self.reader.rows(sql, params)]
        found.sort(key=lambda s: (due_at(s), s.id))
        return found[:limit]
