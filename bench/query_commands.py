"""The query benchmark's commands: what each runs, the SQL its baseline runs instead
(the statements ``recorder/db/recordings.py`` runs for it; where the command reads
frames in pages, ``recorder/db/pages.py``, one statement for them all), and how its
output is checked against the database (:class:`Expect`, read beforehand).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import ro_connect

from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.protocol.story import READ_TYPES

TARGET_SCOPED_S = 0.3
TARGET_STATS_S = 1.0
TERMINAL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))


@dataclass
class Expect:
    """What the commands must print, read from the database beforehand."""

    sid: str
    session_frames: int
    first_id: int
    last_id: int
    session_tasks: int
    frames: int
    sessions: int
    active: int
    newest_session: str
    max_frame_id: int
    connections: int
    max_connection_id: int
    session_row: dict[str, Any]


def expectations(db: Path) -> Expect:
    con = ro_connect(db)
    con.row_factory = sqlite3.Row
    try:
        n = con.execute("SELECT count(*) FROM sessions").fetchone()[0]
        row = con.execute(
            "SELECT * FROM sessions ORDER BY first_seen_us, id LIMIT 1 OFFSET ?", (n // 2,)
        ).fetchone()
        sid = row["id"]
        count, first, last = con.execute(
            "SELECT count(*), min(id), max(id) FROM frames WHERE session_id = ?", (sid,)
        ).fetchone()
        return Expect(
            sid=sid,
            session_frames=count,
            first_id=first,
            last_id=last,
            session_tasks=con.execute(
                "SELECT count(*) FROM tasks WHERE session_id = ?", (sid,)
            ).fetchone()[0],
            frames=con.execute("SELECT sum(frame_count) FROM connections").fetchone()[0],
            sessions=n,
            active=con.execute(
                "SELECT count(*) FROM sessions WHERE status IS NOT NULL"
                f" AND status NOT IN ({TERMINAL})"
            ).fetchone()[0],
            newest_session=con.execute(
                "SELECT id FROM sessions ORDER BY first_seen_us DESC, id DESC LIMIT 1"
            ).fetchone()[0],
            max_frame_id=con.execute("SELECT max(id) FROM frames").fetchone()[0],
            connections=con.execute("SELECT count(*) FROM connections").fetchone()[0],
            max_connection_id=con.execute("SELECT max(id) FROM connections").fetchone()[0],
            session_row=dict(row),
        )
    finally:
        con.close()


Query = tuple[str, tuple[Any, ...]]


@dataclass
class Command:
    name: str
    args: list[str]  # after `recorder`; "{db}" is the database
    queries: list[Query]  # the baseline's SQL
    check: Callable[[list[str], Expect], list[str]]
    target: float | None = None


def baseline_code(queries: list[Query]) -> str:
    """A ``python -c`` program: the queries through stdlib sqlite3, every row printed."""
    lines = [
        "import sqlite3,sys",
        "c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)",
        "w=sys.stdout.write",
        "def q(sql,*a):",
        "    for r in c.execute(sql,a):",
        "        w(repr(r));w('\\n')",
    ]
    lines += [f"q({sql!r}, *{params!r})" for sql, params in queries]
    return "\n".join(lines) + "\n"


def baseline_rows(db: Path, queries: list[Query]) -> int:
    con = ro_connect(db)
    try:
        return sum(len(con.execute(sql, params).fetchall()) for sql, params in queries)
    finally:
        con.close()


def check_frames_session(lines: list[str], e: Expect) -> list[str]:
    if len(lines) != e.session_frames:
        return [f"{len(lines)} lines, expected {e.session_frames}"]
    ids = []
    for line in lines:
        obj = json.loads(line)
        if obj.get("session_id") != e.sid or ("payload" not in obj and "payload_b64" not in obj):
            return [f"a line of another session or without payload: {line[:120]}"]
        ids.append(obj["id"])
    if ids != sorted(ids) or (ids[0], ids[-1]) != (e.first_id, e.last_id):
        return ["ids out of order or not the session's"]
    return []


def check_show(lines: list[str], e: Expect) -> list[str]:
    problems = []
    if not lines or lines[0] != f"session   {e.sid}":
        problems.append(f"first line {lines[:1]}")
    if f"Frames: {e.session_frames}" not in lines:
        problems.append(f"no 'Frames: {e.session_frames}' line")
    if e.session_tasks and "Tasks" not in lines:
        problems.append("no Tasks section")
    return problems


def check_sessions(lines: list[str], e: Expect) -> list[str]:
    want = 1 + min(50, e.sessions)
    if len(lines) != want:
        return [f"{len(lines)} lines, expected {want}"]
    if not lines[1].startswith(e.newest_session + " "):
        return [f"first row is not the newest session {e.newest_session}"]
    return []


def check_frames_last(lines: list[str], e: Expect) -> list[str]:
    if len(lines) != 101:
        return [f"{len(lines)} lines, expected a header and 100 frames"]
    first, last = int(lines[1].split()[0]), int(lines[-1].split()[0])
    if (first, last) != (e.max_frame_id - 99, e.max_frame_id):
        return [f"ids {first}..{last}, expected the newest 100"]
    return []


def check_tasks(lines: list[str], e: Expect) -> list[str]:
    want = 1 + min(50, e.session_tasks)
    if len(lines) != want:
        return [f"{len(lines)} lines, expected {want}"]
    if any(not line.startswith(e.sid + " ") for line in lines[1:]):
        return ["a task of another session"]
    return []


def check_connections(lines: list[str], e: Expect) -> list[str]:
    want = 1 + min(50, e.connections)
    if len(lines) != want:
        return [f"{len(lines)} lines, expected {want}"]
    if lines[1].split()[0] != str(e.max_connection_id):
        return ["first row is not the newest connection"]
    return []


def check_status(lines: list[str], e: Expect) -> list[str]:
    problems = []
    if f"frames      {e.frames:,}" not in lines:
        problems.append(f"no 'frames {e.frames:,}' line")
    if f"sessions    {e.sessions:,} ({e.active:,} active)" not in lines:
        problems.append(f"no 'sessions {e.sessions:,}' line")
    return problems


def section_sum(lines: list[str], title: str) -> int:
    total, inside = 0, False
    for line in lines:
        if line == title:
            inside = True
        elif inside and not line.strip():
            break
        elif inside:
            total += int(line.split()[0].replace(",", ""))
    return total


def check_stats(lines: list[str], e: Expect) -> list[str]:
    problems = []
    if (by_type := section_sum(lines, "Frames by type")) != e.frames:
        problems.append(f"frames by type add up to {by_type:,}, expected {e.frames:,}")
    if (by_day := section_sum(lines, "Frames by day (UTC)")) != e.frames:
        problems.append(f"frames by day add up to {by_day:,}, expected {e.frames:,}")
    if (by_status := section_sum(lines, "Sessions by status")) != e.sessions:
        problems.append(f"sessions by status add up to {by_status:,}, expected {e.sessions:,}")
    return problems


def commands(e: Expect) -> list[Command]:
    """The commands measured, in the order measured and reported."""
    return [
        frames_session(e),
        show(e),
        sessions(e),
        frames_last(e),
        tasks_session(e),
        connections(e),
        status(e),
        stats(e),
    ]


def session_row(e: Expect) -> Query:
    return ("SELECT * FROM sessions WHERE id = ?", (e.sid,))


def frames_session(e: Expect) -> Command:
    return Command(
        "frames --session",
        ["frames", "--database", "{db}", "--session", e.sid, "--limit", "0", "--format", "jsonl"],
        [("SELECT * FROM frames WHERE session_id = ? ORDER BY id", (e.sid,))],
        check_frames_session,
        TARGET_SCOPED_S,
    )


def show(e: Expect) -> Command:
    row = e.session_row
    start = min(row["first_seen_us"], row["started_at_us"] or row["first_seen_us"])
    end = row["ended_at_us"] or int(time.time() * 1e6)
    wanted = ", ".join(f"'{t}'" for t in READ_TYPES)
    queries: list[Query] = [
        session_row(e),
        (
            "SELECT id, connection_id, seq, direction, received_at_us, monotonic_ns,"
            f" type, task_id, size, CASE WHEN type IN ({wanted}) THEN payload END"
            " FROM frames WHERE session_id = ? ORDER BY id",
            (e.sid,),
        ),
        # The connections that carried frames outside this span, the story
        # counted as it read the frames.
        (
            "SELECT * FROM connections WHERE opened_at_us <= ? AND (closed_at_us IS NULL"
            " OR closed_at_us >= ?) ORDER BY id",
            (end, start),
        ),
        ("SELECT count(*) FROM tasks WHERE session_id = ?", (e.sid,)),
        (
            "SELECT * FROM tasks WHERE session_id = ? ORDER BY first_seen_us DESC, id DESC"
            " LIMIT 10",
            (e.sid,),
        ),
    ]
    return Command(
        "show", ["show", "--database", "{db}", e.sid], queries, check_show, TARGET_SCOPED_S
    )


def sessions(e: Expect) -> Command:
    return Command(
        "sessions",
        ["sessions", "--database", "{db}"],
        [("SELECT * FROM sessions ORDER BY first_seen_us DESC, id DESC LIMIT 50", ())],
        check_sessions,
    )


def frames_last(e: Expect) -> Command:
    return Command(
        "frames --last 100",
        ["frames", "--database", "{db}", "--last", "100"],
        [("SELECT * FROM frames ORDER BY id DESC LIMIT 100", ())],
        check_frames_last,
    )


def tasks_session(e: Expect) -> Command:
    tasks: Query = (
        "SELECT * FROM tasks WHERE session_id = ? ORDER BY first_seen_us DESC, id DESC LIMIT 50",
        (e.sid,),
    )
    return Command(
        "tasks --session",
        ["tasks", "--database", "{db}", "--session", e.sid],
        [session_row(e), tasks],
        check_tasks,
        TARGET_SCOPED_S,
    )


def connections(e: Expect) -> Command:
    return Command(
        "connections",
        ["connections", "--database", "{db}"],
        [("SELECT * FROM connections ORDER BY id DESC LIMIT 50", ())],
        check_connections,
    )


def status(e: Expect) -> Command:
    queries: list[Query] = [
        ("SELECT * FROM connections WHERE role = 'link' ORDER BY id DESC LIMIT 1", ()),
        ("SELECT received_at_us FROM frames WHERE id = (SELECT max(id) FROM frames)", ()),
        (
            "SELECT (SELECT coalesce(sum(frame_count), 0) FROM connections),"
            " (SELECT count(*) FROM sessions), (SELECT count(*) FROM sessions WHERE"
            f" status IS NOT NULL AND status NOT IN ({TERMINAL}))",
            (),
        ),
    ]
    return Command(
        "status", ["status", "--database", "{db}"], queries, check_status, TARGET_SCOPED_S
    )


def stats(e: Expect) -> Command:
    queries: list[Query] = [
        (
            "SELECT type, sum(frames), sum(bytes) FROM frame_days"
            " GROUP BY type ORDER BY sum(frames) DESC, type",
            (),
        ),
        (
            "SELECT day_us, sum(frames), sum(bytes) FROM frame_days"
            " GROUP BY day_us ORDER BY day_us",
            (),
        ),
        (
            "SELECT coalesce(status, '?'), count(*) FROM sessions"
            " GROUP BY coalesce(status, '?') ORDER BY count(*) DESC",
            (),
        ),
        (
            "SELECT id, status, frame_count, first_seen_us FROM sessions"
            " ORDER BY frame_count DESC, id LIMIT 10",
            (),
        ),
        (
            "SELECT received_at_us, payload FROM frames WHERE type ="
            " 'daemon_status_update' ORDER BY id DESC LIMIT 1",
            (),
        ),
    ]
    return Command("stats", ["stats", "--database", "{db}"], queries, check_stats, TARGET_STATS_S)
