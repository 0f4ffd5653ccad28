"""Compaction benchmark: does recording go on, at bounded memory, while a large
finished session is compacted?

Measures the firehose's committed rate, the database process's peak RSS and the longest
commit gap while the ``compact`` action folds a finished session's ``--chunks``
(1 000 000) ``stream_chunk`` frames into ``stream_compacted`` ones; against the same
firehose (``--frames``, 6 000 000) into a fresh copy of the database with no compaction,
in the same run (``cleanup_runs.py``). Method, numbers, targets, exit codes:
docs/BENCHMARKS.md, "Compaction during ingest".

    python bench/compact.py                     # 1 000 000 chunks, firehose 6 000 000, 2 runs each
    python bench/compact.py --chunks 100000 --frames 500000 --repeat 1 --json
"""

from __future__ import annotations

import json
import sqlite3
import sys
from array import array
from contextlib import closing

import cleanup_runs
from firehose import DEFAULT_SIZE
from harness import BenchError, ro_connect


def check(bench: cleanup_runs.Bench) -> cleanup_runs.Check:
    """The compaction's check, from the built session's chunks (their seqs, in id order,
    and their text): no chunk left; the compacted frames, in id order, hold the chunks'
    text in seq order; the session's frame_count; the audit row saying so."""
    from recorder.simulator import firehose_template

    sid, chunks = bench.sid, bench.session_frames - 2
    with closing(ro_connect(bench.path)) as con:
        sql = "select seq, payload from frames where session_id = ? and type = ? order by id"
        rows = con.execute(sql, (sid, "stream_chunk"))
        seq, payload = next(rows, (0, ""))
        seqs = array("q", [seq, *(r[0] for r in rows)])
    prefix, suffix = firehose_template(sid, DEFAULT_SIZE, chunks)
    if len(seqs) != chunks or payload != f"{prefix}0{suffix}":
        raise BenchError(f"built: {len(seqs)} chunks, not {chunks} as the simulator makes them")
    text = json.loads(payload)["data"]["chunk"]  # the same filler in every chunk

    def compacted(con: sqlite3.Connection, result: str) -> list[str]:
        sql = "select count(*) from frames where session_id = ? and type = 'stream_chunk'"
        problems = [f"{n} chunks of {sid} left" for n in con.execute(sql, (sid,)).fetchone() if n]
        written = held = 0
        sql = "select payload from frames where session_id = ? and type = ? order by id"
        for (payload,) in con.execute(sql, (sid, "stream_compacted")):
            data = json.loads(payload)["data"]
            written += 1
            n, (first, last) = len(data["text"]) // len(text), data["seqs"]
            span = seqs[held : held + n] or array("q", [-1])  # none: no seq matches
            got = (data["chunks"], first, last, data["text"])
            if len(span) != n or got != (n, span[0], span[-1], text * n):
                problems.append(f"compacted frame {written} is not the {n} chunks after {held}")
                break
            held += n
        if held != chunks:
            problems.append(f"the compacted frames hold {held} chunks' text of {chunks}")
        sql = "select frame_count, (select count(*) from frames where session_id = ?) from sessions"
        counted, rows = con.execute(sql + " where id = ?", (sid, sid)).fetchone()
        if counted != rows:
            problems.append(f"sessions.frame_count {counted}, {rows} rows of {sid}")
        if result != f"compacted {chunks} chunks into {written} frames":
            problems.append(f"audit row: {result!r}, not {chunks} chunks into {written}")
        return problems

    return compacted


if __name__ == "__main__":
    # Once 10 % of the firehose is committed, so that the compaction runs under it.
    sys.exit(cleanup_runs.main("compact", __doc__, ("--chunks", 1_000_000), 6_000_000, 0.1, check))
