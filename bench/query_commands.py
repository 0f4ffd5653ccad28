"""The query benchmark's commands (``bench/query.py``): what each runs, the SQL its
baseline runs instead (the statements ``recorder/db/recordings.py`` runs for it; where
the command reads frames in pages, one statement for them all), its target, and how
its output is checked against the database (``Expect``, read beforehand).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import ro_connect

from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.protocol.story import READ_TYPES

TARGET_SCOPED_S = 0.3  # the session-scoped commands and status, at every size
TARGET_STATS_S = 1.0
TERMINAL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))
ACTIVE = f"status IS NOT NULL AND status NOT IN ({TERMINAL})"


# What the commands must print, read from the database beforehand. S, the session the
# scoped commands ask for, is the one in the middle (by first_seen_us); its span is
# where show counts the connections.
EXPECT = f"""SELECT s.id AS sid, (SELECT count(*) FROM frames WHERE session_id = s.id) AS frames,
 (SELECT count(*) FROM tasks WHERE session_id = s.id) AS tasks,
 min(s.first_seen_us, coalesce(s.started_at_us, s.first_seen_us)) AS start,
 coalesce(s.ended_at_us, :now) AS end,
 (SELECT sum(frame_count) FROM connections) AS all_frames,
 (SELECT count(*) FROM sessions) AS sessions,
 (SELECT count(*) FROM sessions WHERE {ACTIVE}) AS active,
 (SELECT id FROM sessions ORDER BY first_seen_us DESC, id DESC LIMIT 1) AS newest_session,
 (SELECT max(id) FROM frames) AS max_frame_id, (SELECT count(*) FROM connections) AS connections,
 (SELECT max(id) FROM connections) AS max_connection_id
FROM sessions s ORDER BY s.first_seen_us, s.id LIMIT 1
 OFFSET (SELECT count(*) / 2 FROM sessions)"""

Expect = dict[str, Any]


def expectations(db: Path) -> Expect:
    with closing(ro_connect(db)) as con:
        con.row_factory = sqlite3.Row
        return dict(con.execute(EXPECT, {"now": int(time.time() * 1e6)}).fetchone())


def baseline_code(e: Expect) -> str:
    """A ``python -c`` program: the queries (its arguments after the file) through stdlib
    sqlite3 with ``mode=ro``, every row printed with ``repr``."""
    lines = [
        "import sqlite3,sys",
        "c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)",
        f"p={ {k: e[k] for k in ('sid', 'start', 'end')}!r}",
        "for q in sys.argv[2:]:",
        "    for r in c.execute(q,p):",
        "        sys.stdout.write(repr(r)+'\\n')",
    ]
    return "\n".join(lines) + "\n"


def frames_ok(lines: list[str], e: Expect) -> bool:
    """S's frames as JSON lines, each once and with its payload, in id order."""
    rows = [json.loads(line) for line in lines]
    ids = [
        r["id"]
        for r in rows
        if r["session_id"] == e["sid"] and r.keys() & {"payload", "payload_b64"}
    ]
    return ids == sorted(set(ids)) and len(ids) == len(rows) == e["frames"]


def listed(lines: list[str], rows: int, first: str) -> bool:
    """A header, then ``rows`` rows (50 at most), the first starting with ``first``."""
    return len(lines) == 1 + min(50, rows) and (rows == 0 or lines[1].split()[0] == first)


def stats_ok(lines: list[str], e: Expect) -> bool:
    """Each ``stats`` section adds up to the frames or the sessions."""

    def total(title: str) -> int:
        start = lines.index(title) + 1 if title in lines else len(lines)
        end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
        return sum(int(line.split()[0].replace(",", "")) for line in lines[start:end])

    got = total("Frames by type"), total("Frames by day (UTC)"), total("Sessions by status")
    return got == (e["all_frames"], e["all_frames"], e["sessions"])


@dataclass
class Command:
    name: str
    args: list[str]  # after `recorder`, without --database; formatted with Expect
    queries: list[str]  # the baseline's SQL, with Expect as parameters
    check: Callable[[list[str], Expect], bool]  # the lines it printed are right
    target: float | None = None


SESSION = "SELECT * FROM sessions WHERE id = :sid"
TASKS = "SELECT * FROM tasks WHERE session_id = :sid ORDER BY first_seen_us DESC, id DESC LIMIT "
WANTED = ", ".join(f"'{t}'" for t in READ_TYPES)

# The commands measured, in the order measured and reported.
COMMANDS = [
    Command(
        "frames --session",
        ["frames", "--session", "{sid}", "--limit", "0", "--format", "jsonl"],
        ["SELECT * FROM frames WHERE session_id = :sid ORDER BY id"],
        frames_ok,
        TARGET_SCOPED_S,
    ),
    Command(
        "show",
        ["show", "{sid}"],
        [
            SESSION,
            "SELECT id, connection_id, seq, direction, received_at_us, monotonic_ns, type,"
            f" task_id, size, CASE WHEN type IN ({WANTED}) THEN payload END FROM frames"
            " WHERE session_id = :sid ORDER BY id",
            # The connections open in S's span, which the story counts.
            "SELECT * FROM connections WHERE opened_at_us <= :end"
            " AND (closed_at_us IS NULL OR closed_at_us >= :start) ORDER BY id",
            "SELECT count(*) FROM tasks WHERE session_id = :sid",
            TASKS + "10",
        ],
        lambda lines, e: (
            lines[:1] == [f"session   {e['sid']}"]
            and f"Frames: {e['frames']}" in lines
            and (not e["tasks"] or "Tasks" in lines)
        ),
        TARGET_SCOPED_S,
    ),
    Command(
        "sessions",
        ["sessions"],
        ["SELECT * FROM sessions ORDER BY first_seen_us DESC, id DESC LIMIT 50"],
        lambda lines, e: listed(lines, e["sessions"], e["newest_session"]),
    ),
    Command(
        "frames --last 100",
        ["frames", "--last", "100"],
        ["SELECT * FROM frames ORDER BY id DESC LIMIT 100"],
        lambda lines, e: (
            len(lines) == 101
            and (int(lines[1].split()[0]), int(lines[-1].split()[0]))
            == (e["max_frame_id"] - 99, e["max_frame_id"])
        ),
    ),
    Command(
        "tasks --session",
        ["tasks", "--session", "{sid}"],
        [SESSION, TASKS + "50"],
        lambda lines, e: (
            listed(lines, e["tasks"], e["sid"])
            and all(line.startswith(e["sid"] + " ") for line in lines[1:])
        ),
        TARGET_SCOPED_S,
    ),
    Command(
        "connections",
        ["connections"],
        ["SELECT * FROM connections ORDER BY id DESC LIMIT 50"],
        lambda lines, e: listed(lines, e["connections"], str(e["max_connection_id"])),
    ),
    Command(
        "status",
        ["status"],
        [
            "SELECT * FROM connections WHERE role = 'link' ORDER BY id DESC LIMIT 1",
            "SELECT received_at_us FROM frames WHERE id = (SELECT max(id) FROM frames)",
            "SELECT (SELECT coalesce(sum(frame_count), 0) FROM connections),"
            f" (SELECT count(*) FROM sessions), (SELECT count(*) FROM sessions WHERE {ACTIVE})",
        ],
        lambda lines, e: (
            f"frames      {e['all_frames']:,}" in lines
            and f"sessions    {e['sessions']:,} ({e['active']:,} active)" in lines
        ),
        TARGET_SCOPED_S,
    ),
    Command(
        "stats",
        ["stats"],
        [
            "SELECT type, sum(frames), sum(bytes) FROM frame_days"
            " GROUP BY type ORDER BY sum(frames) DESC, type",
            "SELECT day_us, sum(frames), sum(bytes) FROM frame_days"
            " GROUP BY day_us ORDER BY day_us",
            "SELECT coalesce(status, '?'), count(*) FROM sessions"
            " GROUP BY coalesce(status, '?') ORDER BY count(*) DESC",
            "SELECT id, status, frame_count, first_seen_us FROM sessions"
            " ORDER BY frame_count DESC, id LIMIT 10",
            "SELECT received_at_us, payload FROM frames"
            " WHERE type = 'daemon_status_update' ORDER BY id DESC LIMIT 1",
        ],
        stats_ok,
        TARGET_STATS_S,
    ),
]
