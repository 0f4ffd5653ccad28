"""Purge benchmark: does recording go on while a large purge runs?

A purge goes through the recorder's one writer, in short transactions of
``PURGE_CHUNK`` frames (``recorder/cleanup/jobs.py``) between the batches of new
frames. This measures the firehose's committed rate with and without a purge of a
large finished session running at the same time.

Method (every process is separate, everything is on loopback; the process plumbing
is ``bench/harness.py``'s and ``bench/ingest.py``'s):

1. Build, once per invocation (``bench/cleanup_runs.py``'s :func:`build_finished`):
   :func:`recorder.simulator.database.build` records one session of P firehose frames
   (P = ``--purge-frames``, default 1 000 000), as ``recorder simulate --firehose P``
   sends them on the recorder's link (``session_firehose_...``), then its
   ``stream_end`` and the daemon's ``session_status_update`` saying it completed: a
   finished session, P + 2 frames. The frames go through the recorder's classifier
   and its writer's ``Store`` into a file its migrations create (``PRAGMA
   auto_vacuum`` = 2, incremental, is checked and printed), so the rows, indexes,
   rollups (``frame_days``, ``connections.frame_count``) and page layout are the
   recorder's own, in 8-13 s for 1 000 000 frames here (13-20 s when the recorder
   recorded a real firehose for it, until 2026-12-05). The file is then copied for
   each measurement.
2. Baseline: a recorder on a fresh copy, with the purge policy configured but never
   asked to run, records a firehose of N frames (``--frames``, default 2 000 000, so
   that the firehose lasts as long as the purge) from a fresh simulator. The
   benchmark polls the file read-only every ``--poll`` seconds (``max(id)`` of
   ``frames``: new frames get ids above every row of the copy). Rate = committed rows/s between 10 % and 90 % of the firehose (the
   "steady" rate of ``bench/ingest.py``), from the poll samples.
3. Under purge (the loop is ``bench/cleanup_runs.py``'s :func:`observe`): the same,
   and as soon as the first firehose rows are committed,
   ``python -m recorder cleanup run --policy bench-purge --config <cfg>`` runs as a
   subprocess; it finds the running service (its instance lock), asks it through the
   database (``[cleanup] poll = "0.2s"``) and waits for the answer. The policy
   (``action = "purge"``, ``when = {status = ["completed"]}``) matches only the big
   session: the new firehose's session has no status. The purge's own window is its
   audit row, ``cleanup_runs.started_us`` .. ``ended_us`` (matching, the chunked
   deletes, the index rows, and giving the freed pages back with incremental
   vacuum). Rate during the purge = committed firehose rows/s within that window and
   within the firehose's 10-90 % (counts interpolated between poll samples). The
   polls of the big session's ``frame_count`` (``PurgeSome`` lowers it with each
   chunk; ``PurgeFinish`` deletes the row) split the run into the deletes and what
   follows them (the index rows, the vacuum); the rate is also given for each part.
   Purge rate = the session's frames / the run's duration. Coverage = the share of
   the run inside the firehose's 10-90 %: a firehose that ends before the purge does
   measures only the purge's beginning (printed as a note; raise ``--frames``).
4. Checks, after the recorder stopped (it must exit 0): zero loss on the firehose
   connection (exactly one new connection; rows in commit order with ``seq`` 1..M and
   no gap, every index 0..N-1 exactly once and byte-identical to what the simulator
   sends, rebuilt with ``firehose_template``; one ``stream_end``;
   ``connections.frame_count`` equal to its rows); after a purge: no frame and no
   ``sessions`` row left for the big session, one audit row with no error saying it
   purged every frame, and the older connections' ``frame_count`` equal to their
   remaining rows. File sizes (main file and WAL) before, right after the cleanup
   command returned, and after the recorder stopped.
5. Baseline and purge runs alternate ``--repeat`` times (default 2); medians.
   The longest stretch without a new committed row (between 1 % and 99 % of the
   firehose, at the poll's resolution) is printed for both kinds, and so is the
   number of lines of the recorder's stderr that are not JSON (its log format is
   ``json``: anything else came from a library's own logging).

Usage::

    python bench/purge.py                     # 1 000 000 purged, 2 000 000 ingested, 2 repeats
    python bench/purge.py --frames 4000000 --repeat 1    # a firehose that outlasts the purge
    python bench/purge.py --purge-frames 200000 --frames 100000 --repeat 1 --json

Exits 1 if a firehose frame was lost or altered or the purge left frames behind,
2 on a benchmark failure; a missed target is printed, not an exit status.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import sys
import tempfile
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cleanup_runs import (
    Built,
    Observed,
    Run,
    build_finished,
    file_sizes,
    observe,
    verify_firehose,
)
from harness import (
    BenchError,
    Child,
    Deadline,
    log_outcome,
    poll_row,
    ro_connect,
    scratch_dir,
)
from ingest import LossReport, steady_rate
from purge_report import print_table, summarize
from samples import Sample, longest_stall, rate_within, steady_window

DEFAULT_PURGE_FRAMES = 1_000_000
DEFAULT_FRAMES = 2_000_000
POLICY = "bench-purge"  # what cleanup_runs.write_config names the policy of action "purge"


# --- 2, 3. a measurement -------------------------------------------------------------


@dataclass
class PurgeCheck:
    ok: bool
    problems: list[str] = field(default_factory=list)
    purged: int = 0
    frames_left: int = 0


@dataclass
class Measurement:
    kind: str  # "baseline" or "purge"
    frames: int
    steady_fps: float  # 10-90 % of the firehose
    longest_stall_s: float
    recorder_cpu_s: float
    exit_code: int | None
    logged_stopped: bool
    warnings: list[str]
    loss: LossReport
    bytes_before: dict[str, int]
    bytes_after_stop: dict[str, int]
    # Under purge only.
    during_purge_fps: float = float("nan")
    during_delete_fps: float = float("nan")
    during_rest_fps: float = float("nan")  # after the deletes: index rows, vacuum
    overlap_s: float = 0.0
    purge_s: float = float("nan")
    delete_s: float = float("nan")
    command_s: float = float("nan")
    purge_fps: float = float("nan")
    delete_fps: float = float("nan")
    bytes_right_after: dict[str, int] = field(default_factory=dict)
    free_pages_right_after: int = 0
    logical_bytes_right_after: int = 0
    covered: float = float("nan")  # of the purge's run, under the firehose's steady part
    deletes_covered: float = float("nan")
    purge: PurgeCheck | None = None
    # Lines of the recorder's stderr that are not JSON (the log format is "json").
    other_log_lines: int = 0
    first_other_line: str = ""
    # Seconds after the first committed firehose row: the firehose's 10 %, 90 % and
    # end; the cleanup command's start and end, the audit row's, the deletes'.
    timeline: dict[str, float] = field(default_factory=dict)


def measure(
    kind: str,
    built: Built,
    frames: int,
    root: Path,
    deadline: Deadline,
    poll: float,
    stall: float,
    keep: bool,
) -> Measurement:
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    db = workdir / "bench.db"
    try:
        shutil.copyfile(built.path, db)
        sql = "select (select max(id) from frames), (select max(id) from connections)"
        if (base := poll_row(db, sql)) is None:
            raise BenchError(f"cannot read the copy {db}")
        ask_at = 1 if kind == "purge" else None  # as soon as the firehose is committed
        run = Run(
            kind,
            built,
            db,
            (int(base[0]), int(base[1])),
            frames,
            "purge",
            ask_at,
            deadline,
            poll,
            stall,
        )
        bytes_before = file_sizes(db)
        seen = observe(run, workdir)
        if keep:
            (workdir / "samples.json").write_text(json.dumps([asdict(x) for x in seen.samples]))
        result = assess(run, seen, bytes_before)
        if kind == "purge":
            assess_purge(run, seen, result)
        return result
    finally:
        if not keep:  # each run holds a copy of the large file
            shutil.rmtree(workdir, ignore_errors=True)


def assess(run: Run, seen: Observed, bytes_before: dict[str, int]) -> Measurement:
    """What every run measures: the firehose's steady rate and stalls, its loss check,
    the recorder's exit, CPU, log and the file's size."""
    samples, frames = seen.samples, run.frames
    stopped, warnings = log_outcome(seen.log)
    result = Measurement(
        kind=run.kind,
        frames=frames,
        steady_fps=steady_rate([(s.t, s.committed) for s in samples], frames),
        longest_stall_s=longest_stall(samples, frames),
        recorder_cpu_s=seen.cpu_s,
        exit_code=seen.exit_code,
        logged_stopped=stopped,
        warnings=warnings,
        loss=verify_firehose(run),
        bytes_before=bytes_before,
        bytes_after_stop=file_sizes(run.db),
    )
    other = [line for line in seen.log.splitlines() if line.strip() and not line.startswith("{")]
    result.other_log_lines = len(other)
    result.first_other_line = other[0][:160] if other else ""
    t0 = next(x.t for x in samples if x.committed > 0)
    lo, hi = steady_window(samples, frames)
    result.timeline = {"firehose_10%": lo - t0, "firehose_90%": hi - t0}
    result.timeline["firehose_end"] = next(x.t for x in samples if x.committed >= frames) - t0
    return result


def assess_purge(run: Run, seen: Observed, result: Measurement) -> None:
    """Under purge: the rates inside the purge's audit-row span and its deletes', the
    purge's own rate, the file right after it, and the purge check."""
    samples, built = seen.samples, run.built
    with closing(ro_connect(run.db)) as con:
        result.purge = check_purge(con, built, *run.base)
        sql = "select started_us, ended_us from cleanup_runs where policy = ? order by id desc"
        audit = con.execute(sql, (POLICY,)).fetchone()
    if audit is None or seen.command is None:
        raise BenchError("the purge left no audit row")
    start, end = audit[0] / 1e6, audit[1] / 1e6
    lo, hi = steady_window(samples, run.frames)
    result.during_purge_fps, result.overlap_s = rate_within(samples, max(start, lo), min(end, hi))
    d0, d1 = delete_phase(samples, built.session_frames)
    result.during_delete_fps, delete_overlap = rate_within(samples, max(d0, lo), min(d1, hi))
    result.during_rest_fps, _ = rate_within(samples, max(d1, lo), min(end, hi))
    result.purge_s, result.delete_s = end - start, d1 - d0
    result.command_s = seen.command[1] - seen.command[0]
    result.purge_fps = built.session_frames / (end - start)
    result.delete_fps = built.session_frames / (d1 - d0)
    result.bytes_right_after = seen.right_after
    result.free_pages_right_after = seen.free_pages_right_after
    result.logical_bytes_right_after = seen.logical_bytes_right_after
    result.covered = result.overlap_s / result.purge_s
    result.deletes_covered = delete_overlap / result.delete_s
    t0 = next(x.t for x in samples if x.committed > 0)
    marks = {"command_start": seen.command[0], "command_end": seen.command[1]}
    marks |= {"purge_start": start, "purge_end": end, "deletes_start": d0, "deletes_end": d1}
    result.timeline |= {k: v - t0 for k, v in marks.items()}
    if result.overlap_s < 0.5:
        raise BenchError(
            f"the purge ({start - samples[0].t:.1f}..{end - samples[0].t:.1f} s) and the"
            f" firehose's steady part overlapped only {result.overlap_s:.2f} s: raise --frames"
        )


def delete_phase(samples: list[Sample], session_frames: int) -> tuple[float, float]:
    """From the last poll before the big session's frame_count fell to the first poll
    without its row (the chunked deletes; not the matching or the vacuum)."""
    before = [s.t for s in samples if s.left == session_frames]
    gone = [s.t for s in samples if s.left == -1]
    if not before or not gone:
        return float("nan"), float("nan")
    return before[-1], gone[0]


# --- 4. the checks -------------------------------------------------------------------


def check_purge(con: sqlite3.Connection, built: Built, base_id: int, base_cid: int) -> PurgeCheck:
    """The big session is gone, the audit row says so, the older rollups still add up."""
    check = PurgeCheck(ok=True)
    problems = check.problems
    sid = built.session_id
    check.frames_left = con.execute(
        "select count(*) from frames where session_id = ?", (sid,)
    ).fetchone()[0]
    if check.frames_left:
        problems.append(f"{check.frames_left} frames of {sid} left")
    if con.execute("select count(*) from sessions where id = ?", (sid,)).fetchone()[0]:
        problems.append(f"the sessions row of {sid} is still there")
    runs = con.execute(
        "select acted, actions, error from cleanup_runs where policy = ?", (POLICY,)
    ).fetchall()
    if len(runs) != 1:
        problems.append(f"{len(runs)} audit rows for {POLICY}, expected 1")
    else:
        acted, actions, error = runs[0]
        results = [a.get("result", "") for a in json.loads(actions)]
        if error or acted != 1 or len(results) != 1:
            problems.append(f"audit row: acted {acted}, error {error!r}, results {results}")
        else:
            words = results[0].split()
            check.purged = int(words[1]) if words[:1] == ["purged"] else 0
            if check.purged != built.session_frames:
                problems.append(f"audit row: {results[0]!r}, expected {built.session_frames}")
    counted = con.execute(
        "select coalesce(sum(frame_count), 0) from connections where id <= ?", (base_cid,)
    ).fetchone()[0]
    remaining = con.execute("select count(*) from frames where id <= ?", (base_id,)).fetchone()[0]
    if counted != remaining:
        problems.append(f"older connections count {counted} frames, {remaining} remain")
    check.ok = not problems
    return check


# --- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--purge-frames",
        type=int,
        default=DEFAULT_PURGE_FRAMES,
        help="frames of the finished session to purge",
    )
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="firehose frames per run")
    p.add_argument("--repeat", type=int, default=2, help="measurements of each kind (median)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--poll", type=float, default=0.05, help="database poll interval, seconds")
    p.add_argument(
        "--stall", type=float, default=60.0, help="fail after this long without a commit"
    )
    p.add_argument("--timeout", type=float, default=0.0, help="overall limit, s (0: from sizes)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.frames < 1000 or args.purge_frames < 1 or args.repeat < 1 or args.poll <= 0:
        p.error("--frames at least 1000, --purge-frames and --repeat at least 1, --poll positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Generous: the build at 2 000 frames/s, each run 30 s of start-up plus the firehose
    # at 2 000 frames/s and, under purge, the purge at 2 000 frames/s.
    per_run = 30 + args.frames / 2000
    seconds = args.timeout or (
        30 + args.purge_frames / 2000 + args.repeat * (2 * per_run + args.purge_frames / 2000)
    )
    deadline = Deadline(seconds)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs: list[Measurement] = []
    with scratch_dir("bench-purge-", args.keep) as root:
        try:
            if not args.json:
                print(f"building {args.purge_frames:,} frames ...", file=sys.stderr, flush=True)
            built = build_finished(args.purge_frames, root)
            for i in range(args.repeat):
                for kind in ("baseline", "purge"):
                    if not args.json:
                        print(f"run {i + 1}/{args.repeat}: {kind} ...", file=sys.stderr, flush=True)
                    runs.append(
                        measure(
                            kind,
                            built,
                            args.frames,
                            root,
                            deadline,
                            args.poll,
                            args.stall,
                            args.keep,
                        )
                    )
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        finally:
            Child.kill_all()
    summary = summarize(built, runs)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if summary["zero_loss"] and summary["purge_complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
