"""Compaction benchmark: does recording go on, at bounded memory, while a large
finished session is compacted?

Measures, while the cleanup's ``compact`` action folds the ``stream_chunk`` frames of
one finished session (``--chunks``, default 1 000 000) into ``stream_compacted``
frames in the writer's bounded steps: the firehose's committed rate, the compaction's
duration, the peak RSS (``VmHWM`` just before the recorder stops) of the recorder's
database process, the longest time without a new committed row. Against: the same
firehose into a fresh copy of the same database with no compaction (baseline), in the
same invocation; the two kinds alternate ``--repeat`` times (default 2); medians.

Method: ``bench/purge.py``'s with ``action = "compact"``, from the pieces they share
(``bench/cleanup_runs.py``). The database is built once by
:func:`recorder.simulator.database.build`, along the recorder's write path: one
session of the simulator's firehose, then its ``stream_end`` and its ``completed``
status. Each run records a fresh firehose of ``--frames`` (default 6 000 000,
to outlast the compaction) on a copy. Normal rate: the baseline's committed rows/s
over the firehose's 10-90 %. Under compaction, ``recorder cleanup run --policy
bench-compact`` asks the service once 10 % of the firehose is committed; the rate
during it counts inside both its audit row's span (``cleanup_runs.started_us`` ..
``ended_us``) and the firehose's 10-90 % (coverage: that share of the span).
Checks: zero firehose loss (``cleanup_runs.verify_firehose``), :func:`check_rollups`,
:func:`check_compaction`.

Usage::

    python bench/compact.py                   # 1 000 000 chunks, firehose 6 000 000, 2 repeats
    python bench/compact.py --chunks 100000 --frames 200000 --repeat 1 --json

Exits 1 if a check failed, 2 on a benchmark failure; a missed target is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
from array import array
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cleanup_runs as cr
import harness as h
import ingest
from samples import longest_stall, median, rate, rate_within, stall_within, steady_window

TARGET_RATIO = 0.5
POLICY = "bench-compact"  # what cleanup_runs.write_config names the policy of action "compact"


@dataclass
class Source:
    """The built database, and its session's chunks: their seqs, in id order, and text."""

    built: cr.Built
    seqs: array[int]  # other frames may fall between them (in a recorded one, the daemon's)
    chunk_text: str  # firehose_template pads every chunk with the same filler

    @property
    def chunks(self) -> int:
        return len(self.seqs)


def prepare(chunks: int, root: Path) -> Source:
    from recorder.simulator import firehose_template

    built = cr.build_finished(chunks, root)
    sid = built.session_id
    with closing(h.ro_connect(built.path)) as con:
        sql = "select seq, payload from frames where session_id = ? and type = ? order by id"
        rows = con.execute(sql, (sid, "stream_chunk"))
        seq, payload = next(rows, (0, ""))
        seqs = array("q", [seq, *(r[0] for r in rows)])
    prefix, suffix = firehose_template(sid, ingest.DEFAULT_SIZE, chunks)
    if len(seqs) != chunks or payload != f"{prefix}0{suffix}":
        raise h.BenchError(f"built: {len(seqs)} chunks, not {chunks} as the simulator makes them")
    return Source(built, seqs, json.loads(payload)["data"]["chunk"])


@dataclass
class Measurement:
    kind: str  # "baseline" or "compact"
    frames: int
    steady_fps: float  # 10-90 % of the firehose
    longest_stall_s: float  # 1-99 % of the firehose
    db_peak_mb: float  # MiB
    exit_code: int | None
    logged_stopped: bool
    warnings: list[str]
    loss: ingest.LossReport
    problems: list[str] = field(default_factory=list)  # the checks other than the loss check
    # Under compaction only.
    during_fps: float = float("nan")
    overlap_s: float = 0.0
    covered: float = float("nan")
    stall_during_s: float = float("nan")
    compact_s: float = float("nan")
    chunks_per_s: float = float("nan")
    compacted_frames: int = 0
    # Seconds after the first committed firehose row.
    timeline: dict[str, float] = field(default_factory=dict)


def measure(kind: str, source: Source, root: Path, args: argparse.Namespace) -> Measurement:
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    db = workdir / "bench.db"
    try:
        shutil.copyfile(source.built.path, db)
        sql = "select (select max(id) from frames), (select max(id) from connections)"
        if (base := h.poll_row(db, sql)) is None:
            raise h.BenchError(f"cannot read the copy {db}")
        # Once 10 % of the firehose is committed, so that the compaction runs under it.
        ask_at = args.frames // 10 if kind == "compact" else None
        run = cr.Run(
            kind,
            source.built,
            db,
            (int(base[0]), int(base[1])),
            args.frames,
            "compact",
            ask_at,
            args.deadline,
            args.poll,
            args.stall,
        )
        seen = cr.observe(run, workdir)
        if args.keep:
            (workdir / "samples.json").write_text(json.dumps([asdict(s) for s in seen.samples]))
        return assess(run, source, seen)
    finally:
        if not args.keep:  # each run holds a copy of the large file
            shutil.rmtree(workdir, ignore_errors=True)


def assess(run: cr.Run, source: Source, seen: cr.Observed) -> Measurement:
    samples, frames = seen.samples, run.frames
    stopped, warnings = h.log_outcome(seen.log)
    loss = cr.verify_firehose(run)
    with closing(h.ro_connect(run.db)) as con:
        problems = check_rollups(con)
        written = check_compaction(con, source, problems) if run.kind == "compact" else 0
        sql = "select started_us, ended_us from cleanup_runs where policy = ?"
        audit = con.execute(sql, (POLICY,)).fetchone()
    steady = ingest.steady_rate([(s.t, s.committed) for s in samples], frames)
    gap = longest_stall(samples, frames)
    peak = seen.db_peak_kib / 1024
    m = Measurement(run.kind, frames, steady, gap, peak, seen.exit_code, stopped, warnings, loss)
    m.problems, m.compacted_frames = problems, written
    t0 = next(s.t for s in samples if s.committed > 0)
    lo, hi = steady_window(samples, frames)
    m.timeline = {"firehose_10%": lo - t0, "firehose_90%": hi - t0}
    if run.kind == "compact":
        if audit is None:
            raise h.BenchError("the compaction left no audit row")
        start, end = audit[0] / 1e6, audit[1] / 1e6
        m.during_fps, m.overlap_s = rate_within(samples, max(start, lo), min(end, hi))
        m.compact_s = end - start
        m.chunks_per_s = source.chunks / m.compact_s
        m.covered = m.overlap_s / m.compact_s
        m.stall_during_s = stall_within(samples, max(start, lo), min(end, hi))
        m.timeline |= {"compact_start": start - t0, "compact_end": end - t0}
        if m.overlap_s < 0.5:
            raise h.BenchError(
                f"the compaction ({start - t0:.1f}..{end - t0:.1f} s) and the firehose's"
                f" steady part overlapped {m.overlap_s:.2f} s: raise --frames"
            )
    return m


def check_rollups(con: sqlite3.Connection) -> list[str]:
    """Every connection's frame_count and every frame_days row equal to the rows."""
    from recorder.protocol.index import DAY_US

    problems = [
        f"connection {cid}: frame_count {counted}, {rows} rows"
        for cid, counted, rows in con.execute(
            "select c.id, c.frame_count, count(f.id) from connections c"
            " left join frames f on f.connection_id = c.id group by c.id"
        )
        if counted != rows
    ]
    sql = "select day_us, type, direction, frames, bytes from frame_days where frames or bytes"
    kept = {r[:3]: r[3:] for r in con.execute(sql)}
    sql = (
        f"select received_at_us - received_at_us % {DAY_US}, coalesce(type, ''), direction,"
        " count(*), sum(size) from frames group by 1, 2, 3"
    )
    rows = {r[:3]: r[3:] for r in con.execute(sql)}
    for key in sorted(k for k in kept.keys() | rows.keys() if kept.get(k) != rows.get(k))[:10]:
        problems.append(f"frame_days {key}: {kept.get(key)}, the rows {rows.get(key)}")
    return problems


def check_compaction(con: sqlite3.Connection, source: Source, problems: list[str]) -> int:
    """No chunk left; compacted frames holding the chunks' text in seq order; the audit
    row saying so. Returns how many compacted frames there are."""
    sid, text = source.built.session_id, source.chunk_text
    sql = "select count(*) from frames where session_id = ? and type = 'stream_chunk'"
    if left := con.execute(sql, (sid,)).fetchone()[0]:
        problems.append(f"{left} stream_chunk frames of {sid} left")
    written = held = 0
    sql = "select payload from frames where session_id = ? and type = ? order by id"
    for (payload,) in con.execute(sql, (sid, "stream_compacted")):
        data = json.loads(payload)["data"]
        written += 1
        n, (first, last) = len(data["text"]) // len(text), data["seqs"]
        run = source.seqs[held : held + n] or array("q", [-1])  # none: no seq matches
        got = (data["chunks"], first, last, data["text"])
        if len(run) != n or got != (n, run[0], run[-1], text * n):
            problems.append(
                f"compacted frame {written} (seqs {first}..{last}, {data['chunks']} chunks)"
                f" is not the text of the {n} chunks after the first {held}"
            )
            break
        held += n
    if held != source.chunks:
        problems.append(f"the compacted frames hold {held} chunks' text of {source.chunks}")
    sql = "select frame_count, (select count(*) from frames where session_id = ?) from sessions"
    counted, rows = con.execute(sql + " where id = ?", (sid, sid)).fetchone()
    if counted != rows:
        problems.append(f"sessions.frame_count {counted}, {rows} rows of {sid}")
    sql = "select state, error, acted, actions from cleanup_runs where policy = ?"
    runs = con.execute(sql, (POLICY,)).fetchall()
    said = f"compacted {source.chunks} chunks into {written} frames"
    results = [a.get("result") for a in json.loads(runs[0][3])] if len(runs) == 1 else []
    if len(runs) != 1 or runs[0][:3] != ("done", None, 1) or results != [said]:
        problems.append(f"audit rows {[r[:3] for r in runs]}, results {results}: not {said!r}")
    return written


def summarize(source: Source, runs: list[Measurement]) -> dict[str, Any]:
    base = [r for r in runs if r.kind == "baseline"]
    comp = [r for r in runs if r.kind == "compact"]
    normal = median([r.steady_fps for r in base])
    during = median([r.during_fps for r in comp])
    s: dict[str, Any] = {"chunks": source.chunks, "frames": runs[0].frames, "repeat": len(comp)}
    s |= {"build_s": source.built.seconds, "normal_fps": normal, "during_fps": during}
    s["ratio"] = during / normal
    for key in ("overlap_s", "covered", "compact_s", "chunks_per_s", "compacted_frames"):
        s[key] = median([float(getattr(r, key)) for r in comp])
    s["db_peak_mb_normal"] = median([r.db_peak_mb for r in base])
    s["db_peak_mb_compact"] = median([r.db_peak_mb for r in comp])
    s["db_peak_ratio"] = s["db_peak_mb_compact"] / s["db_peak_mb_normal"]
    s["longest_stall_s_normal"] = max(r.longest_stall_s for r in base)
    s["longest_stall_s_during"] = max(r.stall_during_s for r in comp)
    s["zero_loss"] = all(r.loss.ok for r in runs)
    s["checks"] = all(not r.problems for r in runs)
    s["clean_stop"] = all(r.exit_code == 0 and r.logged_stopped for r in runs)
    s["targets"] = {"ratio_ge_0.5": s["ratio"] >= TARGET_RATIO}
    s["targets"] |= {k: s[k] for k in ("zero_loss", "checks", "clean_stop")}
    s["machine"] = {"nproc": os.cpu_count(), "python": sys.version.split()[0]}
    s["runs"] = [asdict(r) for r in runs]
    return s


def print_table(s: dict[str, Any]) -> None:
    rows = [
        ("chunks compacted (one finished session)", f"{s['chunks']:,}"),
        ("firehose frames per run", f"{s['frames']:,}"),
        ("database built in", f"{s['build_s']:.1f} s"),
        ("ingest frames/s, normal (10-90%)", rate(s["normal_fps"])),
        ("ingest frames/s, during compaction", rate(s["during_fps"])),
        ("ratio during/normal", f"{s['ratio']:.2f}  (target >= {TARGET_RATIO})"),
        ("compaction measured under ingest", f"{s['overlap_s']:.1f} s, {s['covered']:.0%} of it"),
        ("compaction (audit row)", f"{s['compact_s']:.1f} s, {rate(s['chunks_per_s'])} chunks/s"),
        ("database process peak RSS, normal", f"{s['db_peak_mb_normal']:,.1f} MiB"),
        ("database process peak RSS, compaction", f"{s['db_peak_mb_compact']:,.1f} MiB"),
        ("peak RSS ratio compaction/normal", f"{s['db_peak_ratio']:.2f}"),
        ("longest commit gap, normal", f"{s['longest_stall_s_normal']:.2f} s"),
        ("longest commit gap, during compaction", f"{s['longest_stall_s_during']:.2f} s"),
        ("zero loss", h.yes(s["zero_loss"])),
        ("compaction and rollups as they should be", h.yes(s["checks"])),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"compaction benchmark ({s['repeat']} run(s) of each kind; medians, longest gaps)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("  runs:")
    for r in s["runs"]:
        line = f"    {r['kind']:<8} steady {rate(r['steady_fps'])} f/s, exit {r['exit_code']},"
        line += f" db peak {r['db_peak_mb']:,.1f} MiB, longest gap {r['longest_stall_s']:.2f} s"
        if r["kind"] == "compact":
            line += f"; during compaction {rate(r['during_fps'])} f/s ({r['covered']:.0%} of it)"
        print(line)
        marks = ", ".join(f"{k} {v:.1f}" for k, v in r["timeline"].items())
        print(f"      s after the first firehose row: {marks}")
        for problem in r["problems"][:10]:
            print(f"      check: {problem}")
        ingest.print_run_problems(r)
    if s["covered"] < 0.99:
        print(f"  note: the firehose's steady part covered {s['covered']:.0%} of the compaction")
    print(h.targets_line(s["targets"]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = p.add_argument
    add("--chunks", type=int, default=1_000_000, help="chunks of the session to compact")
    add("--frames", type=int, default=6_000_000, help="firehose frames per run")
    add("--repeat", type=int, default=2, help="measurements of each kind (median)")
    add("--json", action="store_true", help="print the results as JSON")
    add("--poll", type=float, default=0.05, help="database poll interval, seconds")
    add("--stall", type=float, default=60.0, help="fail after this long without a commit")
    add("--timeout", type=float, default=0.0, help="overall limit, s (0: from the sizes)")
    add("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.frames < 1000 or args.chunks < 2 or args.repeat < 1 or args.poll <= 0:
        p.error("--frames at least 1000, --chunks at least 2, --repeat at least 1, --poll > 0")
    # Generous: the build, firehoses, compactions at 2 000 frames/s, 30 s per start.
    runs = args.repeat * (60 + (2 * args.frames + args.chunks) / 2000)
    args.deadline = h.Deadline(args.timeout or 30 + args.chunks / 2000 + runs)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs: list[Measurement] = []
    with h.scratch_dir("bench-compact-", args.keep) as root:
        try:
            print(f"building {args.chunks:,} chunks ...", file=sys.stderr)
            source = prepare(args.chunks, root)
            for i in range(args.repeat):
                for kind in ("baseline", "compact"):
                    print(f"run {i + 1}/{args.repeat}: {kind} ...", file=sys.stderr, flush=True)
                    runs.append(measure(kind, source, root, args))
        except h.BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        finally:
            h.Child.kill_all()
    summary = summarize(source, runs)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if summary["zero_loss"] and summary["checks"] else 1


if __name__ == "__main__":
    sys.exit(main())
