"""Compaction benchmark: does recording go on, at bounded memory, while a large
finished session is compacted?

Measures, while the cleanup's ``compact`` action folds the ``stream_chunk`` frames of
one finished session (``--chunks``, default 1 000 000) into ``stream_compacted`` frames
in the writer's bounded steps, asked for once 10 % of the firehose is committed: the
firehose's committed rate, the database process's peak RSS and the longest commit gap;
against the same firehose (``--frames``, default 6 000 000, to outlast the compaction)
into a fresh copy of the same database with no compaction, in the same invocation
(``bench/cleanup_runs.py``). Checks: zero firehose loss, the rollups, and
:func:`prepare`'s. Method, numbers and targets: docs/BENCHMARKS.md, "Compaction during
ingest".

    python bench/compact.py                     # 1 000 000 chunks, firehose 6 000 000, 2 runs each
    python bench/compact.py --chunks 100000 --frames 500000 --repeat 1 --json

Exits 1 if a check failed, 2 on a benchmark failure; a missed target is printed.
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


def prepare(built: cleanup_runs.Built) -> cleanup_runs.Check:
    """The compaction's check, from the built session's chunks (their seqs, in id order,
    and their text): no chunk left; the compacted frames, in id order, hold the chunks'
    text in seq order; the session's frame_count; the audit row saying so."""
    from recorder.simulator import firehose_template

    sid, chunks = built.session_id, built.session_frames - 2
    with closing(ro_connect(built.path)) as con:
        sql = "select seq, payload from frames where session_id = ? and type = ? order by id"
        rows = con.execute(sql, (sid, "stream_chunk"))
        seq, payload = next(rows, (0, ""))
        seqs = array("q", [seq, *(r[0] for r in rows)])
    prefix, suffix = firehose_template(sid, DEFAULT_SIZE, chunks)
    if len(seqs) != chunks or payload != f"{prefix}0{suffix}":
        raise BenchError(f"built: {len(seqs)} chunks, not {chunks} as the simulator makes them")
    text = json.loads(payload)["data"]["chunk"]  # the same filler in every chunk

    def check(con: sqlite3.Connection, result: str) -> list[str]:
        sql = "select count(*) from frames where session_id = ? and type = 'stream_chunk'"
        problems = [f"{n} chunks of {sid} left" for n in con.execute(sql, (sid,)).fetchone() if n]
        written = held = 0
        sql = "select payload from frames where session_id = ? and type = ? order by id"
        for (payload,) in con.execute(sql, (sid, "stream_compacted")):
            data = json.loads(payload)["data"]
            written += 1
            n, (first, last) = len(data["text"]) // len(text), data["seqs"]
            span = seqs[held : held + n] or array("q", [-1])  # none: no seq matches
            if len(span) != n or (data["chunks"], first, last, data["text"]) != (
                n,
                span[0],
                span[-1],
                text * n,
            ):
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

    return check


if __name__ == "__main__":
    args = cleanup_runs.options(__doc__, "--chunks", 1_000_000, 6_000_000)
    sys.exit(cleanup_runs.main("compact", args, args.frames // 10, prepare))
