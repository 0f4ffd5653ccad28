"""Purge benchmark: does recording go on while a large purge runs?

Measures the firehose's committed rate while ``recorder cleanup run`` purges one
finished session (``--purge-frames``, default 1 000 000) through the recorder's one
writer, in short transactions between its batches, asked for as soon as the firehose's
first rows are committed; against the same firehose (``--frames``, default 2 000 000)
into a fresh copy of the same database with no purge, in the same invocation
(``bench/cleanup_runs.py``). Checks: zero firehose loss, the rollups, nothing of the
session left, an audit row saying every frame was purged. Method, numbers and targets:
docs/BENCHMARKS.md, "Purge during ingest".

    python bench/purge.py                       # purge 1 000 000, firehose 2 000 000, 2 runs each
    python bench/purge.py --purge-frames 100000 --frames 500000 --repeat 1 --json

Exits 1 if a firehose frame was lost or altered or a check failed, 2 on a benchmark
failure; a missed target is printed, not an exit status.
"""

from __future__ import annotations

import sqlite3
import sys

import cleanup_runs


def prepare(built: cleanup_runs.Built) -> cleanup_runs.Check:
    def check(con: sqlite3.Connection, result: str) -> list[str]:
        sid, problems = built.session_id, []
        for table, column in (("frames", "session_id"), ("sessions", "id")):
            sql = f"select count(*) from {table} where {column} = ?"
            if left := con.execute(sql, (sid,)).fetchone()[0]:
                problems.append(f"{left} rows of {sid} left in {table}")
        if result != f"purged {built.session_frames} frames":
            problems.append(f"audit row: {result!r}, not {built.session_frames} frames purged")
        return problems

    return check


if __name__ == "__main__":
    args = cleanup_runs.options(__doc__, "--purge-frames", 1_000_000, 2_000_000)
    sys.exit(cleanup_runs.main("purge", args, 1, prepare))
