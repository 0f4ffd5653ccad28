"""The read library: what every front end reads of a database of recordings.

A :class:`Recordings` is opened read-only on a URL (:meth:`Recordings.open`) and
returns named rows (:mod:`recorder.db.rows`): sessions with their filters, one
session's story, frames with their filters and following, tasks, connections, the
status and stats, the cleanup's history. The CLI renders what it returns, and so
will any other front end; neither writes SQL.

Every session-scoped query walks an index: its cost follows the session, not the
database. Counts that would scan every frame come from the writer's rollups
(``connections.frame_count``, ``frame_days``). Frames are read in pages
(:mod:`recorder.db.pages`): no read snapshot outlives a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from recorder.db import pages
from recorder.db.alert_reads import AlertReads
from recorder.db.cleanup_reads import CleanupReads
from recorder.db.export_reads import ExportReads
from recorder.db.follow import Follower
from recorder.db.frame_reads import FrameReads
from recorder.db.otel_reads import OtelReads
from recorder.db.pages import FrameFilter
from recorder.db.readonly import Reader, first_row, open_reader
from recorder.db.report_reads import ReportReads
from recorder.db.rows import (
    FRAME_COLUMNS,
    Connection,
    Frame,
    Instance,
    Session,
    Tally,
    Task,
)
from recorder.db.session_ids import NoSuchSession, SessionIds
from recorder.db.stats_reads import StatsReads
from recorder.db.story_reads import StoryReads
from recorder.db.strip_reads import StripReads
from recorder.protocol.kept import Kept
from recorder.protocol.statuses import ACTIVE_SQL
from recorder.protocol.story import KEEP
from recorder.protocol.tame import read_object

__all__ = ["FrameFilter", "NoSuchSession", "Recordings", "Stats", "Status"]


@dataclass(frozen=True)
class Status:
    connected_since_us: int | None
    last_connection: Connection | None
    last_frame_us: int | None
    frame_count: int
    session_count: int
    active_sessions: int
    database_bytes: int | None
    # What the recorder instance last said about itself (None: never ran here).
    instance: Instance | None = None
    proxied_frames: int = 0


@dataclass(frozen=True)
class Stats:
    by_type: list[Tally]
    by_day: list[Tally]
    # (status, sessions), most first; "?" for sessions never seen with one.
    by_status: list[tuple[str, int]]
    busiest: list[Session]
    database_bytes: int | None
    daemon: dict[str, Any]
    daemon_at_us: int | None


class Recordings(
    AlertReads,
    CleanupReads,
    ExportReads,
    FrameReads,
    OtelReads,
    ReportReads,
    StatsReads,
    StoryReads,
    StripReads,
    SessionIds,
):
    """One database's recordings, read-only."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.backend = reader.backend

    @classmethod
    def open(cls, url: str, shown: str | None = None) -> Recordings:
        """Read-only; ReadError (one line naming the database as ``shown``) if it cannot."""
        return cls(open_reader(url, shown))

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> Recordings:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- sessions ---------------------------------------------------------------------

    def sessions(
        self,
        *,
        status: str | None = None,
        since_us: int | None = None,
        limit: int = 50,
        orchestrator: str | None = None,
        text: str | None = None,
        before: str | None = None,
        newer_than: str | None = None,
    ) -> list[Session]:
        """Newest first (by when the recorder first saw them). ``text``: in the task
        description; ``before``: only sessions listed after that session's id (a page's
        key, not an offset: the next page costs what the first did); ``newer_than``:
        only sessions listed before that one, the ``limit`` of them nearest to it (a
        list that grows at its top takes the next ``limit`` without a hole)."""
        conds: list[str] = []
        params: dict[str, Any] = {}
        if status is not None:
            conds.append("status = :status")
            params["status"] = status
        if since_us is not None:
            conds.append("last_seen_us >= :since_us")
            params["since_us"] = since_us
        if orchestrator is not None:
            conds.append("orchestrator_id = :orchestrator")
            params["orchestrator"] = orchestrator
        if text is not None:
            conds.append(self.backend.contains("task_description", "text"))
            params["text"] = text
        if before is not None:
            key = "(SELECT first_seen_us FROM sessions WHERE id = :before)"
            conds.append(f"(first_seen_us < {key} OR (first_seen_us = {key} AND id < :before))")
            params["before"] = before
        order = "DESC"
        if newer_than is not None:
            key = "(SELECT first_seen_us FROM sessions WHERE id = :newer)"
            conds.append(f"(first_seen_us > {key} OR (first_seen_us = {key} AND id > :newer))")
            params["newer"] = newer_than
            order = "ASC"  # up from the key, then turned newest first
        where = " WHERE " + " AND ".join(conds) if conds else ""
        limit_sql = f" LIMIT {int(limit)}" if limit else ""
        sql = f"SELECT * FROM sessions{where} ORDER BY first_seen_us {order}, id {order}{limit_sql}"
        found = [Session.of(r) for r in self.reader.rows(sql, params)]
        return found[::-1] if order == "ASC" else found

    def session_status(self, session_id: str) -> str | None:
        row = first_row(self.reader, "SELECT status FROM sessions WHERE id = :s", {"s": session_id})
        return None if row is None else row["status"]

    # --- tasks and connections ----------------------------------------------------------

    def tasks(self, session_id: str | None = None, limit: int = 0) -> list[Task]:
        """Newest first, of every session or of one."""
        where = " WHERE session_id = :sid" if session_id is not None else ""
        limit_sql = f" LIMIT {int(limit)}" if limit else ""
        sql = f"SELECT * FROM tasks{where} ORDER BY first_seen_us DESC, id DESC{limit_sql}"
        return [Task.of(r) for r in self.reader.rows(sql, {"sid": session_id})]

    def session_tasks(self, session_id: str, keep: int = KEEP) -> Kept[Task]:
        """A session's tasks, newest first, for ``show``: the newest and the oldest
        ``keep`` of them, and how many there are."""
        count = first_row(
            self.reader, "SELECT count(*) AS n FROM tasks WHERE session_id = :s", {"s": session_id}
        )
        total = int(count["n"]) if count is not None else 0
        kept: Kept[Task] = Kept(keep)
        oldest: list[Task] = []
        if total > keep:
            sql = (
                "SELECT * FROM tasks WHERE session_id = :sid ORDER BY first_seen_us, id "
                f"LIMIT {int(min(keep, total - keep))}"
            )
            oldest = [Task.of(r) for r in self.reader.rows(sql, {"sid": session_id})]
        for task in [*self.tasks(session_id, limit=keep), *reversed(oldest)]:
            kept.add(task)
        kept.total = max(total, kept.total)
        return kept

    def connections(self, *, role: str | None = None, limit: int = 0) -> list[Connection]:
        """Newest first."""
        where = " WHERE role = :role" if role is not None else ""
        limit_sql = f" LIMIT {int(limit)}" if limit else ""
        sql = f"SELECT * FROM connections{where} ORDER BY id DESC{limit_sql}"
        return [Connection.of(r) for r in self.reader.rows(sql, {"role": role})]

    def role(self, connection_id: int) -> str | None:
        row = first_row(
            self.reader, "SELECT role FROM connections WHERE id = :id", {"id": connection_id}
        )
        return None if row is None else str(row["role"])

    # --- frames ------------------------------------------------------------------------

    def frame_pages(self, f: FrameFilter) -> Iterator[list[Frame]]:
        """Frames in recording order, a page at a time (no statement open between)."""
        for rows in pages.frame_pages(self.reader, f, FRAME_COLUMNS):
            yield [Frame._make(row) for row in rows]

    def frames(self, f: FrameFilter) -> Iterator[Frame]:
        for page in self.frame_pages(f):
            yield from page

    def follow(
        self,
        f: FrameFilter,
        *,
        last: int,
        poll: float,
        wait: Callable[[float], None] = time.sleep,
    ) -> Iterator[Frame]:
        """The newest ``last`` frames, then every frame committed later, as they come,
        until the caller stops (and a session's spawn request, when it is attributed
        to the session). Each look is a short statement, and so is each page."""
        seen = self.newest_frame_id()
        follower = Follower(self, f, seen, late_spawn=True)
        if last:
            for frame in self.frames(replace(f, last=last, through_id=seen)):
                follower.printed(frame.id)
                yield frame
        while True:
            wait(poll)
            yield from follower.new()

    def newest_frame_id(self, session_id: str | None = None) -> int:
        """The newest frame's id (of a session's frames, with ``session_id``); 0: none."""
        if session_id is None:
            row = first_row(self.reader, "SELECT max(id) AS id FROM frames")
        else:
            sql = "SELECT max(id) AS id FROM frames WHERE session_id = :s"
            row = first_row(self.reader, sql, {"s": session_id})
        return int(row["id"]) if row is not None and row["id"] is not None else 0

    def first_in(self, connection_id: int) -> Frame | None:
        """The first frame the daemon sent on a connection (its hello)."""
        return self._one(
            "connection_id = :c AND direction = 'in' ORDER BY id", {"c": connection_id}
        )

    def daemon_status_before(self, through_id: int) -> Frame | None:
        """The last daemon_status_update recorded up to frame ``through_id``."""
        where = "type = 'daemon_status_update' AND id <= :u ORDER BY id DESC"
        return self._one(where, {"u": through_id or 2**62})

    def spawned_on(self, session_id: str) -> int | None:
        """The connection that sent the session's spawn_session (the UI that made it).
        Through the index by type: one row per spawn ever, where the session's own
        index would walk every frame of a long session."""
        session = self.backend.unindexed("session_id")
        sql = (
            "SELECT connection_id FROM frames WHERE type = 'spawn_session' "
            f"AND {session} = :sid ORDER BY id LIMIT 1"
        )
        row = first_row(self.reader, sql, {"sid": session_id})
        return None if row is None else int(row["connection_id"])

    def _one(self, where: str, params: dict[str, Any]) -> Frame | None:
        row = first_row(
            self.reader, f"SELECT {FRAME_COLUMNS} FROM frames WHERE {where} LIMIT 1", params
        )
        return None if row is None else Frame._make(row)

    # --- the recorder, and the database ------------------------------------------------

    def status(self, instance: str = "default") -> Status:
        """What the recorder has done, read in constant time whatever the size."""
        last_conn = first_row(
            self.reader,
            "SELECT * FROM connections WHERE role = 'link' AND instance = :instance "
            "ORDER BY id DESC LIMIT 1",
            {"instance": instance},
        )
        last_frame = first_row(
            self.reader,
            "SELECT received_at_us FROM frames WHERE id = (SELECT max(id) FROM frames)",
        )
        counts = first_row(
            self.reader,
            "SELECT (SELECT coalesce(sum(frame_count), 0) FROM connections) AS frames, "
            "(SELECT count(*) FROM sessions) AS sessions, "
            f"(SELECT count(*) FROM sessions WHERE {ACTIVE_SQL}) AS active, "
            "(SELECT coalesce(sum(frame_count), 0) FROM connections WHERE role = 'proxy')"
            " AS proxied",
        )
        found = self.instance(instance)
        assert counts is not None
        link = Connection.of(last_conn) if last_conn is not None else None
        return Status(
            connected_since_us=link.opened_at_us if link and link.closed_at_us is None else None,
            last_connection=link,
            last_frame_us=last_frame["received_at_us"] if last_frame is not None else None,
            frame_count=int(counts["frames"]),
            session_count=int(counts["sessions"]),
            active_sessions=int(counts["active"]),
            database_bytes=self.reader.size_bytes(),
            instance=found,
            proxied_frames=int(counts["proxied"]),
        )

    def instance(self, name: str) -> Instance | None:
        """What the recorder ``name`` last said about itself (its heartbeat), if it ran."""
        row = first_row(self.reader, "SELECT * FROM instances WHERE name = :name", {"name": name})
        return Instance.of(row) if row is not None else None

    def holder(self, instance: str) -> str | None:
        """Who runs the recorder ``instance`` (its lock), or None; CannotTell."""
        return self.backend.holder(instance, self.reader)

    def stats(self, busiest: int = 10) -> Stats:
        rows = self.reader.rows
        by_type = rows(
            "SELECT type, sum(frames) AS frames, sum(bytes) AS bytes FROM frame_days "
            "GROUP BY type ORDER BY sum(frames) DESC, type"
        )
        by_day = rows(
            "SELECT day_us, sum(frames) AS frames, sum(bytes) AS bytes FROM frame_days "
            "GROUP BY day_us ORDER BY day_us"
        )
        by_status = rows(
            "SELECT coalesce(status, '?') AS status, count(*) AS sessions FROM sessions "
            "GROUP BY coalesce(status, '?') ORDER BY count(*) DESC"
        )
        top = rows(f"SELECT * FROM sessions ORDER BY frame_count DESC, id LIMIT {int(busiest)}")
        last = self.daemon_status_before(0)
        daemon: dict[str, Any] = {}
        said = (read_object(last.payload) or {}).get("status") if last and last.payload else None
        if isinstance(said, dict):
            daemon = said
        return Stats(
            [Tally.of(r) for r in by_type],
            [Tally.of(r) for r in by_day],
            [(str(r["status"]), int(r["sessions"])) for r in by_status],
            [Session.of(r) for r in top],
            self.reader.size_bytes(),
            daemon,
            last.received_at_us if last is not None else None,
        )

    def schema_revision(self) -> str | None:
        """The schema's revision (alembic's), None before any; read-only, since
        `db current` runs on copies too and must not change a byte of them."""
        if first_row(self.reader, self.backend.table_exists("alembic_version")) is None:
            return None
        row = first_row(self.reader, "SELECT version_num FROM alembic_version")
        return str(row["version_num"]) if row is not None else None
