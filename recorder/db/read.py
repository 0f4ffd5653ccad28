"""The read side: the queries the CLI (and replay and cleanup) share.

Plain SQL over a :class:`~recorder.db.readonly.Reader`, written so that every
session-scoped query walks an index: its cost follows the session, not the
database. Counts that would scan every frame come from the writer's rollups
(``connections.frame_count``, ``frame_days``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Frames themselves are read in pages; these are the names the read side has had.
from recorder.db.pages import FrameFilter as FrameFilter
from recorder.db.pages import frames as frames
from recorder.db.pages import newest_frame_id as newest_frame_id
from recorder.db.readonly import ACTIVE_SQL, Reader, ReadError, Row, first_row
from recorder.protocol.kept import Kept
from recorder.protocol.story import (
    KEEP,
    READ_TYPES,
    Recording,
    Story,
    StoryFrame,
    Teller,
    span,
)
from recorder.protocol.tame import on_one_line, read_object
from recorder.times import now_us


class NoSuchSession(ReadError):
    """No session, or more than one, matches what the user typed."""


def sessions(
    reader: Reader, *, status: str | None = None, since_us: int | None = None, limit: int = 50
) -> list[Row]:
    conds: list[str] = []
    params: dict[str, Any] = {}
    if status is not None:
        conds.append("status = :status")
        params["status"] = status
    if since_us is not None:
        conds.append("last_seen_us >= :since_us")
        params["since_us"] = since_us
    where = " WHERE " + " AND ".join(conds) if conds else ""
    limit_sql = f" LIMIT {int(limit)}" if limit else ""
    return reader.rows(
        f"SELECT * FROM sessions{where} ORDER BY first_seen_us DESC, id DESC{limit_sql}", params
    )


def resolve_session(reader: Reader, text: str) -> Row:
    """The session whose id is ``text`` or starts with it (exactly one must)."""
    exact = first_row(reader, "SELECT * FROM sessions WHERE id = :id", {"id": text})
    if exact is not None:
        return exact
    # SQLite compares bytes, so a range on the key finds every id starting with the
    # text; PostgreSQL's collations may not sort that way, and its table is read as is.
    starts = reader.backend.starts_with("id")
    found = reader.rows(
        f"SELECT * FROM sessions WHERE {starts} ORDER BY id LIMIT 6",
        {"prefix": text, "beyond": text + "\U0010ffff", "n": len(text)},
    )
    if not found:
        raise NoSuchSession(f"no recorded session matches {text!r} (see `recorder sessions`)")
    if len(found) > 1:
        names = ", ".join(on_one_line(row["id"]) for row in found[:5])
        raise NoSuchSession(f"{text!r} matches more than one session: {names}, ...")
    return found[0]


def tasks(reader: Reader, session_id: str | None = None, limit: int = 0) -> list[Row]:
    where = " WHERE session_id = :sid" if session_id is not None else ""
    limit_sql = f" LIMIT {int(limit)}" if limit else ""
    return reader.rows(
        f"SELECT * FROM tasks{where} ORDER BY first_seen_us DESC, id DESC{limit_sql}",
        {"sid": session_id} if session_id is not None else {},
    )


def connections(reader: Reader, *, role: str | None = None, limit: int = 0) -> list[Row]:
    where = " WHERE role = :role" if role is not None else ""
    limit_sql = f" LIMIT {int(limit)}" if limit else ""
    return reader.rows(
        f"SELECT * FROM connections{where} ORDER BY id DESC{limit_sql}",
        {"role": role} if role is not None else {},
    )


@dataclass(frozen=True)
class Status:
    connected_since_us: int | None
    last_connection: Row | None
    last_frame_us: int | None
    frame_count: int
    session_count: int
    active_sessions: int
    database_bytes: int | None
    # What the recorder instance last said about itself (None: never ran here).
    instance: Row | None = None
    proxied_frames: int = 0


def status(reader: Reader, instance: str = "default") -> Status:
    """What the recorder has done, read in constant time whatever the database's size."""
    last_conn = first_row(
        reader,
        "SELECT * FROM connections WHERE role = 'link' AND instance = :instance "
        "ORDER BY id DESC LIMIT 1",
        {"instance": instance},
    )
    last_frame = first_row(
        reader, "SELECT received_at_us FROM frames WHERE id = (SELECT max(id) FROM frames)"
    )
    counts = first_row(
        reader,
        "SELECT (SELECT coalesce(sum(frame_count), 0) FROM connections) AS frames, "
        "(SELECT count(*) FROM sessions) AS sessions, "
        f"(SELECT count(*) FROM sessions WHERE {ACTIVE_SQL}) AS active, "
        "(SELECT coalesce(sum(frame_count), 0) FROM connections WHERE role = 'proxy') AS proxied",
    )
    found = first_row(reader, "SELECT * FROM instances WHERE name = :name", {"name": instance})
    assert counts is not None
    connected_since = None
    if last_conn is not None and last_conn["closed_at_us"] is None:
        connected_since = last_conn["opened_at_us"]
    return Status(
        connected_since_us=connected_since,
        last_connection=last_conn,
        last_frame_us=last_frame["received_at_us"] if last_frame is not None else None,
        frame_count=int(counts["frames"]),
        session_count=int(counts["sessions"]),
        active_sessions=int(counts["active"]),
        database_bytes=reader.size_bytes(),
        instance=found,
        proxied_frames=int(counts["proxied"]),
    )


@dataclass(frozen=True)
class Stats:
    by_type: list[Row]
    by_day: list[Row]
    by_status: list[Row]
    busiest: list[Row]
    database_bytes: int | None
    daemon: dict[str, Any]
    daemon_at_us: int | None


def stats(reader: Reader, busiest: int = 10) -> Stats:
    by_type = reader.rows(
        "SELECT type, sum(frames) AS frames, sum(bytes) AS bytes FROM frame_days "
        "GROUP BY type ORDER BY sum(frames) DESC, type"
    )
    by_day = reader.rows(
        "SELECT day_us, sum(frames) AS frames, sum(bytes) AS bytes FROM frame_days "
        "GROUP BY day_us ORDER BY day_us"
    )
    by_status = reader.rows(
        "SELECT coalesce(status, '?') AS status, count(*) AS sessions FROM sessions "
        "GROUP BY coalesce(status, '?') ORDER BY count(*) DESC"
    )
    top = reader.rows(
        "SELECT id, status, frame_count, first_seen_us FROM sessions "
        f"ORDER BY frame_count DESC, id LIMIT {int(busiest)}"
    )
    last = first_row(
        reader,
        "SELECT received_at_us, payload FROM frames WHERE type = 'daemon_status_update' "
        "ORDER BY id DESC LIMIT 1",
    )
    daemon: dict[str, Any] = {}
    if last is not None and last["payload"]:
        status_obj = _json(last["payload"]).get("status")
        if isinstance(status_obj, dict):
            daemon = status_obj
    return Stats(
        by_type,
        by_day,
        by_status,
        top,
        reader.size_bytes(),
        daemon,
        last["received_at_us"] if last is not None else None,
    )


def story(reader: Reader, session: Row, *, longest: int | None = None) -> Story:
    """``recorder show``: a session's frames read once, through its index, a page at a
    time, and folded into its story (``longest``: see :class:`Teller`)."""
    sid = session["id"]
    wanted = ", ".join(f"'{t}'" for t in READ_TYPES)
    columns = (
        "id, connection_id, seq, direction, received_at_us, monotonic_ns, type, task_id, "
        f"size, CASE WHEN type IN ({wanted}) THEN payload END AS payload"
    )
    teller = Teller(dict(session), longest=longest)
    for r in frames(reader, FrameFilter(session_id=sid), columns):
        payload = r["payload"]
        teller.add(
            StoryFrame(
                r["id"],
                r["connection_id"],
                r["seq"],
                r["direction"],
                r["received_at_us"],
                r["monotonic_ns"],
                r["type"],
                r["task_id"],
                r["size"],
                _json(payload) if payload else None,
            )
        )
    start, end = span(session)
    recordings = recordings_around(reader, start, end or now_us())
    # The connections that carried the session's frames outside that span too (a
    # clock that jumped): the fold counted them.
    known = {r.id for r in recordings}
    missing = sorted(set(teller.per_connection) - known)
    for chunk in range(0, len(missing), 500):
        ids = ", ".join(str(int(i)) for i in missing[chunk : chunk + 500])
        recordings += [
            recording(r) for r in reader.rows(f"SELECT * FROM connections WHERE id IN ({ids})")
        ]
    recordings.sort(key=lambda r: r.id)
    return teller.told(recordings, now_us())


def session_tasks(reader: Reader, session_id: str, keep: int = KEEP) -> Kept[Row]:
    """A session's tasks, newest first, for ``show``: the newest and the oldest
    ``keep`` of them, and how many there are."""
    count = first_row(
        reader, "SELECT count(*) AS n FROM tasks WHERE session_id = :sid", {"sid": session_id}
    )
    total = int(count["n"]) if count is not None else 0
    kept: Kept[Row] = Kept(keep)
    newest = tasks(reader, session_id, limit=keep)
    oldest: list[Row] = []
    if total > keep:
        oldest = reader.rows(
            "SELECT * FROM tasks WHERE session_id = :sid ORDER BY first_seen_us, id "
            f"LIMIT {int(min(keep, total - keep))}",
            {"sid": session_id},
        )
    for row in [*newest, *reversed(oldest)]:
        kept.add(row)
    kept.total = max(total, kept.total)
    return kept


def recording(row: Row) -> Recording:
    return Recording(
        row["id"],
        row["role"],
        row["url"],
        row["client_addr"],
        row["opened_at_us"],
        row["closed_at_us"],
        row["close_code"],
        row["closed_by"],
        row["error"],
    )


def recordings_around(
    reader: Reader, start: int, end: int, more: str = "", params: dict[str, Any] | None = None
) -> list[Recording]:
    """The connections that were up at some point of [start, end] (``more``: an OR)."""
    return [
        recording(r)
        for r in reader.rows(
            "SELECT * FROM connections WHERE opened_at_us <= :end "
            f"AND (closed_at_us IS NULL OR closed_at_us >= :start) {more} ORDER BY id",
            {"start": start, "end": end, **(params or {})},
        )
    ]


def _json(text: str) -> dict[str, Any]:
    return read_object(text) or {}


def schema_revision(reader: Reader) -> str | None:
    """The database's schema revision (alembic's), None before any: read-only, since
    `db current` runs on copies too and must not change a byte of them."""
    if first_row(reader, reader.backend.table_exists("alembic_version")) is None:
        return None
    row = first_row(reader, "SELECT version_num FROM alembic_version")
    return str(row["version_num"]) if row is not None else None
