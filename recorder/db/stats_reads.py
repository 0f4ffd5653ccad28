"""What the read library reads for the console's stats beyond :meth:`Recordings.stats`:
the recorders that ever linked to a daemon here, and how long each one's link was up.
Part of :class:`recorder.db.recordings.Recordings`."""

from __future__ import annotations

from dataclasses import dataclass

from recorder.db.readonly import Reader
from recorder.db.rows import Connection


@dataclass(frozen=True)
class LinkSpans:
    """One recorder instance's link connections, summed.

    ``up_us`` covers every one of them but the newest, each up from its opening to its
    close, or to the next one's opening when it was never closed (a recorder killed
    with its row open) or closed after it: the newest, which may still be up, is
    ``newest`` for the caller to end (now, or the recorder's last heartbeat)."""

    instance: str
    connections: int
    first_opened_us: int
    up_us: int
    newest: Connection


class StatsReads:
    reader: Reader

    def link_spans(self) -> list[LinkSpans]:
        """Each instance's link connections, summed (:class:`LinkSpans`). One pass over
        the connections table, which grows with reconnects, not with frames."""
        sql = (
            "SELECT instance, count(*) AS n, min(opened_at_us) AS first_us, "
            "max(id) AS newest_id, coalesce(sum(CASE WHEN next_us IS NULL THEN 0 "
            "WHEN closed_at_us IS NULL OR closed_at_us > next_us THEN next_us - opened_at_us "
            "ELSE closed_at_us - opened_at_us END), 0) AS up_us "
            "FROM (SELECT instance, id, opened_at_us, closed_at_us, "
            "lead(opened_at_us) OVER (PARTITION BY instance ORDER BY id) AS next_us "
            "FROM connections WHERE role = 'link') AS links "
            "GROUP BY instance ORDER BY instance"
        )
        found = self.reader.rows(sql)
        if not found:
            return []
        ids = ", ".join(str(int(r["newest_id"])) for r in found)
        newest = {
            int(r["id"]): Connection.of(r)
            for r in self.reader.rows(f"SELECT * FROM connections WHERE id IN ({ids})")
        }
        return [
            LinkSpans(
                str(r["instance"]),
                int(r["n"]),
                int(r["first_us"]),
                int(r["up_us"]),
                newest[int(r["newest_id"])],
            )
            for r in found
        ]

    def instance_names(self) -> list[str]:
        """The recorder instances that ran here (a heartbeat) or linked (a connection)."""
        sql = (
            "SELECT name FROM instances UNION "
            "SELECT DISTINCT instance AS name FROM connections WHERE role = 'link' ORDER BY name"
        )
        return [str(r["name"]) for r in self.reader.rows(sql)]
