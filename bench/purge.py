"""Purge benchmark: does recording go on while a large purge runs?

Measures the firehose's committed rate while ``recorder cleanup run`` purges a finished
session of ``--purge-frames`` (1 000 000) through the recorder's writer, asked for as
soon as the firehose is committed; against the same firehose (``--frames``, 2 000 000)
into a fresh copy of the database with no purge, in the same run (``cleanup_runs.py``).
Method, numbers, targets, exit codes: docs/BENCHMARKS.md, "Purge during ingest".

    python bench/purge.py                       # purge 1 000 000, firehose 2 000 000, 2 runs each
    python bench/purge.py --purge-frames 100000 --frames 1000000 --repeat 1 --json
"""

from __future__ import annotations

import sqlite3
import sys

import cleanup_runs


def check(bench: cleanup_runs.Bench) -> cleanup_runs.Check:
    def purged(con: sqlite3.Connection, result: str) -> list[str]:
        sid, problems = bench.sid, []
        for table, column in (("frames", "session_id"), ("sessions", "id")):
            sql = f"select count(*) from {table} where {column} = ?"
            if left := con.execute(sql, (sid,)).fetchone()[0]:
                problems.append(f"{left} rows of {sid} left in {table}")
        if result != f"purged {bench.session_frames} frames":
            problems.append(f"audit row: {result!r}, not {bench.session_frames} frames purged")
        return problems

    return purged


if __name__ == "__main__":
    # As soon as the firehose's first rows are committed.
    sys.exit(
        cleanup_runs.main("purge", __doc__, ("--purge-frames", 1_000_000), 2_000_000, 0, check)
    )
