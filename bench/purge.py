"""Purge benchmark: does recording go on while a large purge runs?

A purge goes through the recorder's one writer, in short transactions of
``PURGE_CHUNK`` frames (``recorder/cleanup/jobs.py``) between the batches of new
frames. This measures the firehose's committed rate with and without a purge of a
large finished session running at the same time.

Method (every process is separate, everything is on loopback; the process plumbing
is ``bench/harness.py``'s and ``bench/ingest.py``'s):

1. Build, once per invocation: the real recorder (``python -m recorder run``, its
   proxy off) records ``recorder simulate --firehose P --chunk-delay 0`` (P =
   ``--purge-frames``, default 1 000 000) into a fresh SQLite file, exactly as
   ``bench/ingest.py`` does. Every firehose frame carries one session id
   (``session_firehose_...``); a ``stream_chunk`` from the daemon shows that the
   session exists, so the recorder made its ``sessions`` row, with no status. A purge
   touches only finished sessions, so once the recorder has stopped (no writer
   holds the file) the benchmark sets ``UPDATE sessions SET status = 'completed'``
   on that row with stdlib ``sqlite3`` and truncates the WAL. Recording the session
   for real, rather than generating rows with SQL as ``bench/query.py`` does, gives
   the exact rows, indexes, rollups (``frame_days``, ``connections.frame_count``)
   and page layout the recorder itself writes, and a file created by the recorder
   (``PRAGMA auto_vacuum`` = 2, incremental, is checked and printed), in 13-20 s
   for 1 000 000 frames here. The file is then copied for each measurement.
2. Baseline: a recorder on a fresh copy, with the purge policy configured but never
   asked to run, records a firehose of N frames (``--frames``, default 2 000 000, so that the firehose lasts as long as the purge) from
   a fresh simulator. The benchmark polls the file read-only every ``--poll``
   seconds (``max(id)`` of ``frames``: new frames get ids above every row of the
   copy). Rate = committed rows/s between 10 % and 90 % of the firehose (the
   "steady" rate of ``bench/ingest.py``), from the poll samples.
3. Under purge: the same, and as soon as the first firehose rows are committed,
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
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from harness import (
    BenchError,
    Child,
    Deadline,
    cpu_seconds,
    log_outcome,
    poll_row,
    recorder_config,
    ro_connect,
    scratch_dir,
    targets_line,
    yes,
)
from ingest import (
    NO_PROXY,
    FirehoseRows,
    LossReport,
    print_run_problems,
    process_tree,
    start_simulator,
    steady_rate,
)

TARGET_RATIO = 0.5
DEFAULT_PURGE_FRAMES = 1_000_000
DEFAULT_FRAMES = 2_000_000
POLICY = "bench-purge"
# What the benchmarks' recorder configuration leaves out: the request poll, and the
# policy, named "bench-<action>" (bench/compact.py asks for action = "compact").
CLEANUP_CONFIG = """
[cleanup]
poll = "0.2s"

[[cleanup.policies]]
name = "bench-{action}"
schedule = "every 1h"
action = "{action}"
when = {{ status = ["completed"] }}
"""


def write_config(workdir: Path, port: int, db: Path, action: str = "purge") -> Path:
    config = workdir / "config.toml"
    cleanup = CLEANUP_CONFIG.format(action=action)
    config.write_text(recorder_config(port, f"sqlite:///{db}") + NO_PROXY + cleanup)
    return config


def file_sizes(db: Path) -> dict[str, int]:
    wal = db.with_name(db.name + "-wal")
    return {"main": db.stat().st_size, "wal": wal.stat().st_size if wal.exists() else 0}


def start_recorder(config: Path, workdir: Path) -> Child:
    return Child(
        "recorder", [sys.executable, "-m", "recorder", "run", "--config", str(config)], workdir
    )


def stop_recorder(rec: Child, deadline: Deadline) -> tuple[int | None, str]:
    code = rec.terminate(min(90.0, max(deadline.left(), 1.0)))
    return code, rec.log()


# --- 1. the database to purge --------------------------------------------------------


@dataclass
class Built:
    path: Path
    session_id: str
    session_frames: int
    seconds: float
    auto_vacuum: int
    bytes: int


def build(purge_frames: int, root: Path, deadline: Deadline, poll: float, stall: float) -> Built:
    workdir = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    db = workdir / "big.db"
    t0 = time.monotonic()
    sim, port = start_simulator(purge_frames, workdir, deadline)
    rec: Child | None = None
    try:
        rec = start_recorder(write_config(workdir, port, db), workdir)
        wait_committed(rec, db, 0, purge_frames, deadline, poll, stall, "building")
        code, log = stop_recorder(rec, deadline)
    finally:
        if rec is not None:
            rec.kill()
        sim.stop()
    stopped, warnings = log_outcome(log)
    if code != 0 or not stopped:
        raise BenchError(f"the building recorder exited {code}: {warnings}\n{log[-2000:]}")
    # No recorder runs now: a plain write to mark the session finished.
    con = sqlite3.connect(db, isolation_level=None)
    try:
        found = con.execute(
            "select id, frame_count, status from sessions where id like 'session_firehose_%'"
        ).fetchall()
        if len(found) != 1:
            raise BenchError(f"expected one firehose session in the built database: {found}")
        sid, count, status = found[0]
        rows = con.execute("select count(*) from frames where session_id = ?", (sid,)).fetchone()[0]
        if status is not None or count != rows or rows != purge_frames + 1:
            raise BenchError(
                f"firehose session {sid}: status {status!r}, frame_count {count}, {rows} rows;"
                f" expected no status and {purge_frames + 1} (the chunks and stream_end)"
            )
        con.execute("update sessions set status = 'completed' where id = ?", (sid,))
        con.execute("pragma wal_checkpoint(truncate)")
        auto_vacuum = int(con.execute("pragma auto_vacuum").fetchone()[0])
    finally:
        con.close()
    return Built(
        path=db,
        session_id=sid,
        session_frames=rows,
        seconds=time.monotonic() - t0,
        auto_vacuum=auto_vacuum,
        bytes=db.stat().st_size,
    )


def wait_committed(
    rec: Child,
    db: Path,
    base_id: int,
    frames: int,
    deadline: Deadline,
    poll: float,
    stall: float,
    what: str,
) -> None:
    """Until the firehose's stream_end (a row above ``base_id``) is committed."""
    sql = (
        "select (select max(id) from frames),"
        " (select count(*) from frames where type = 'stream_end' and id > ?)"
    )
    last, since = -1, time.monotonic()
    while True:
        row = poll_row(db, sql, (base_id,))
        if row is not None and row[1]:
            return
        deadline.check(what)
        if not rec.alive():
            raise BenchError(f"recorder exited early:\n{rec.log()[-2000:]}")
        top = (row[0] if row else None) or 0
        if top != last:
            last, since = top, time.monotonic()
        elif time.monotonic() - since > stall:
            raise BenchError(f"no frame committed for {stall:.0f} s while {what} (row {top})")
        time.sleep(poll)


# --- 2, 3. a measurement -------------------------------------------------------------


@dataclass
class Sample:
    t: float  # wall clock, seconds since the epoch
    committed: int  # firehose rows committed (max(id) above the copy's last row)
    left: int  # the big session's frame_count; -1 once its row is gone


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
        return _measure(kind, built, frames, workdir, db, deadline, poll, stall, keep)
    finally:
        if not keep:  # each run holds a copy of the large file
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(
    kind: str,
    built: Built,
    frames: int,
    workdir: Path,
    db: Path,
    deadline: Deadline,
    poll: float,
    stall: float,
    keep: bool,
) -> Measurement:
    shutil.copyfile(built.path, db)
    base = poll_row(db, "select (select max(id) from frames), (select max(id) from connections)")
    if base is None:
        raise BenchError(f"cannot read the copy {db}")
    base_id, base_cid = int(base[0]), int(base[1])
    bytes_before = file_sizes(db)
    sample_sql = (
        "select (select max(id) from frames),"
        " (select frame_count from sessions where id = ?),"
        " (select count(*) from frames where type = 'stream_end' and id > ?)"
    )
    sim, port = start_simulator(frames, workdir, deadline)
    rec: Child | None = None
    cleanup: Child | None = None
    samples: list[Sample] = []
    command: tuple[float, float] | None = None
    started = 0.0
    right_after: dict[str, int] = {}
    free_after = logical_after = 0
    try:
        config = write_config(workdir, port, db)
        rec = start_recorder(config, workdir)
        cpu0: float | None = None
        last_top, since = -1, time.monotonic()
        firehose_done = False
        while True:
            now = time.time()
            row = poll_row(db, sample_sql, (built.session_id, base_id))
            if row is not None:
                top = int(row[0] or 0)
                samples.append(Sample(now, top - base_id, -1 if row[1] is None else int(row[1])))
                firehose_done = bool(row[2])
                if top != last_top:
                    last_top, since = top, time.monotonic()
                if top > base_id and cpu0 is None:
                    cpu0 = sum(cpu_seconds(p, children=False) for p in process_tree(rec.pid))
                if kind == "purge" and top > base_id and cleanup is None and command is None:
                    args = [sys.executable, "-m", "recorder", "cleanup", "run"]
                    args += ["--policy", POLICY, "--config", str(config), "--format", "json"]
                    cleanup = Child("cleanup", args, workdir, pipe_stdout=True)
                    started = time.time()
            if cleanup is not None and not cleanup.alive():
                command = (started, time.time())
                right_after = file_sizes(db)
                pages = poll_row(
                    db,
                    "select freelist_count, page_count * page_size"
                    " from pragma_freelist_count, pragma_page_count, pragma_page_size",
                )
                free_after, logical_after = (int(pages[0]), int(pages[1])) if pages else (0, 0)
                out = cleanup.proc.stdout.read() if cleanup.proc.stdout else b""
                code = cleanup.proc.returncode
                log = cleanup.log()
                cleanup.kill()
                cleanup = None
                if code != 0:
                    raise BenchError(f"`recorder cleanup run` exited {code}:\n{log[-2000:]}")
                (workdir / "cleanup.out").write_bytes(out)
            if firehose_done and (kind == "baseline" or command is not None):
                break
            deadline.check(f"the {kind} run")
            if not rec.alive():
                raise BenchError(f"recorder exited early:\n{rec.log()[-2000:]}")
            if not firehose_done and time.monotonic() - since > stall:
                raise BenchError(f"no frame committed for {stall:.0f} s ({kind} run)")
            time.sleep(poll)
        cpu = sum(cpu_seconds(p, children=False) for p in process_tree(rec.pid)) - (cpu0 or 0.0)
        exit_code, log = stop_recorder(rec, deadline)
    finally:
        for child in (cleanup, rec):
            if child is not None:
                child.kill()
        sim.stop()

    stopped, warnings = log_outcome(log)
    con = ro_connect(db)
    try:
        loss = verify_firehose(con, base_id, base_cid, frames)
        check = check_purge(con, built, base_id, base_cid) if kind == "purge" else None
        run = con.execute(
            "select started_us, ended_us from cleanup_runs where policy = ? order by id desc",
            (POLICY,),
        ).fetchone()
    finally:
        con.close()
    result = Measurement(
        kind=kind,
        frames=frames,
        steady_fps=steady_rate([(s.t, s.committed) for s in samples], frames),
        longest_stall_s=longest_stall(samples, frames),
        recorder_cpu_s=cpu,
        exit_code=exit_code,
        logged_stopped=stopped,
        warnings=warnings,
        loss=loss,
        bytes_before=bytes_before,
        bytes_after_stop=file_sizes(db),
    )
    other = [line for line in log.splitlines() if line.strip() and not line.startswith("{")]
    result.other_log_lines = len(other)
    result.first_other_line = other[0][:160] if other else ""
    if keep:
        (workdir / "samples.json").write_text(json.dumps([asdict(x) for x in samples]))
    t0 = next(x.t for x in samples if x.committed > 0)
    lo, hi = steady_window(samples, frames)
    result.timeline = {"firehose_10%": lo - t0, "firehose_90%": hi - t0}
    result.timeline["firehose_end"] = next(x.t for x in samples if x.committed >= frames) - t0
    if kind == "purge":
        if run is None or command is None:
            raise BenchError("the purge left no audit row")
        start, end = run[0] / 1e6, run[1] / 1e6
        result.during_purge_fps, result.overlap_s = rate_within(
            samples, max(start, lo), min(end, hi)
        )
        d0, d1 = delete_phase(samples, built.session_frames)
        result.during_delete_fps, delete_overlap = rate_within(samples, max(d0, lo), min(d1, hi))
        result.during_rest_fps, _ = rate_within(samples, max(d1, lo), min(end, hi))
        result.purge_s = end - start
        result.delete_s = d1 - d0
        result.command_s = command[1] - command[0]
        result.purge_fps = built.session_frames / (end - start)
        result.delete_fps = built.session_frames / (d1 - d0)
        result.bytes_right_after = right_after
        result.free_pages_right_after = free_after
        result.logical_bytes_right_after = logical_after
        result.covered = result.overlap_s / result.purge_s
        result.deletes_covered = delete_overlap / result.delete_s
        result.purge = check
        marks = {"command_start": command[0], "command_end": command[1], "purge_start": start}
        marks |= {"purge_end": end, "deletes_start": d0, "deletes_end": d1}
        result.timeline |= {k: v - t0 for k, v in marks.items()}
        if result.overlap_s < 0.5:
            raise BenchError(
                f"the purge ({start - samples[0].t:.1f}..{end - samples[0].t:.1f} s) and the"
                f" firehose's steady part overlapped only {result.overlap_s:.2f} s: raise --frames"
            )
    return result


# --- the samples ---------------------------------------------------------------------


def count_at(samples: list[Sample], t: float) -> float:
    """Firehose rows committed at wall time ``t``, interpolated between two samples."""
    for a, b in pairwise(samples):
        if a.t <= t <= b.t:
            if b.t == a.t:
                return float(b.committed)
            return a.committed + (b.committed - a.committed) * (t - a.t) / (b.t - a.t)
    return float(samples[-1].committed if t > samples[-1].t else samples[0].committed)


def rate_within(samples: list[Sample], lo: float, hi: float) -> tuple[float, float]:
    """(committed rows/s between ``lo`` and ``hi``, the window's length); NaN if empty."""
    if not hi > lo:  # also when either is NaN
        return float("nan"), 0.0
    return (count_at(samples, hi) - count_at(samples, lo)) / (hi - lo), hi - lo


def steady_window(samples: list[Sample], frames: int) -> tuple[float, float]:
    """When the firehose passed 10 % and 90 % (the baseline's steady rate, interpolated)."""

    def crossing(n: int) -> float:
        for a, b in pairwise(samples):
            if a.committed < n <= b.committed:
                return a.t + (b.t - a.t) * (n - a.committed) / (b.committed - a.committed)
        raise BenchError(f"the samples never crossed {n} committed rows")

    return crossing(frames // 10), crossing(frames * 9 // 10)


def delete_phase(samples: list[Sample], session_frames: int) -> tuple[float, float]:
    """From the last poll before the big session's frame_count fell to the first poll
    without its row (the chunked deletes; not the matching or the vacuum)."""
    before = [s.t for s in samples if s.left == session_frames]
    gone = [s.t for s in samples if s.left == -1]
    if not before or not gone:
        return float("nan"), float("nan")
    return before[-1], gone[0]


def longest_stall(samples: list[Sample], frames: int) -> float:
    """The longest time between two polls that saw new rows, from 1 % to 99 %."""
    lo, hi = frames // 100, frames * 99 // 100
    inside = [
        b.t
        for a, b in pairwise(samples)
        if b.committed != a.committed and lo <= b.committed and a.committed <= hi
    ]
    return max((b - a for a, b in pairwise(inside)), default=0.0)


# --- 4. the checks -------------------------------------------------------------------


def verify_firehose(
    con: sqlite3.Connection, base_id: int, base_cid: int, frames: int
) -> LossReport:
    """Every firehose frame exactly once, in a gap-free seq, byte-identical to the wire."""
    check = FirehoseRows(frames)
    problems = check.report.problems
    links = con.execute(
        "select id, frame_count from connections where id > ? order by id", (base_cid,)
    ).fetchall()
    if len(links) != 1:
        problems.append(f"{len(links)} new connections, expected 1 (the link reconnected?)")
    if not links:
        check.report.ok = False
        return check.report
    cid, frame_count = links[0]
    rows = con.execute(
        "select connection_id, seq, type, opcode, size, payload, payload_bytes from frames"
        " where id > ? order by id",
        (base_id,),
    )
    for connection_id, *row in rows:
        if connection_id != cid:
            problems.append(f"a row of connection {connection_id} above the copy's last row")
            continue
        check.row(*row)
    return check.finish(frame_count)


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


# --- 5. the report -------------------------------------------------------------------


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # NaN: a run with no such window
    return statistics.median(values) if values else float("nan")


def summarize(built: Built, runs: list[Measurement]) -> dict[str, Any]:
    baselines = [r for r in runs if r.kind == "baseline"]
    purges = [r for r in runs if r.kind == "purge"]
    normal = median([r.steady_fps for r in baselines])
    during = median([r.during_purge_fps for r in purges])
    ratio = during / normal
    zero_loss = all(r.loss.ok for r in runs)
    purged = all(r.purge is not None and r.purge.ok for r in purges)
    clean_stop = all(r.exit_code == 0 and r.logged_stopped for r in runs)
    return {
        "purge_frames": built.session_frames,
        "frames": runs[0].frames,
        "repeat": len(purges),
        "build_s": built.seconds,
        "auto_vacuum": built.auto_vacuum,
        "normal_fps": normal,
        "during_purge_fps": during,
        "ratio": ratio,
        "during_delete_fps": median([r.during_delete_fps for r in purges]),
        "during_rest_fps": median([r.during_rest_fps for r in purges]),
        "overlap_s": median([r.overlap_s for r in purges]),
        "covered": median([r.covered for r in purges]),
        "purge_s": median([r.purge_s for r in purges]),
        "delete_s": median([r.delete_s for r in purges]),
        "command_s": median([r.command_s for r in purges]),
        "purge_fps": median([r.purge_fps for r in purges]),
        "delete_fps": median([r.delete_fps for r in purges]),
        "purge_steady_fps": median([r.steady_fps for r in purges]),
        "zero_loss": zero_loss,
        "purge_complete": purged,
        "clean_stop": clean_stop,
        "targets": {
            "ratio_ge_0.5": ratio >= TARGET_RATIO,
            "zero_loss": zero_loss,
            "purge_complete": purged,
            "clean_stop": clean_stop,
        },
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "runs": [asdict(r) for r in runs],
    }


def rate(fps: float) -> str:
    return f"{fps:,.0f}" if fps == fps else "-"  # NaN: no such window in the run


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def sizes(b: dict[str, int]) -> str:
    return f"{mb(b['main'])} (+ WAL {mb(b['wal'])})" if b else "-"


def print_table(s: dict[str, Any]) -> None:
    rows = [
        ("frames purged (one finished session)", f"{s['purge_frames']:,}"),
        ("firehose frames per run", f"{s['frames']:,}"),
        ("database built in", f"{s['build_s']:.1f} s, PRAGMA auto_vacuum = {s['auto_vacuum']}"),
        ("ingest frames/s, normal (10-90%)", f"{rate(s['normal_fps'])}"),
        ("ingest frames/s, during the purge", f"{rate(s['during_purge_fps'])}"),
        ("ratio during/normal", f"{s['ratio']:.2f}  (target >= {TARGET_RATIO})"),
        ("ingest frames/s, during the deletes", f"{rate(s['during_delete_fps'])}"),
        ("ingest frames/s, after them (vacuum)", f"{rate(s['during_rest_fps'])}"),
        ("purge measured under ingest", f"{s['overlap_s']:.1f} s, {s['covered']:.0%} of it"),
        ("purge s (audit row)", f"{s['purge_s']:.1f}, of which deletes {s['delete_s']:.1f}"),
        ("purge frames/s", f"{rate(s['purge_fps'])}, deletes alone {rate(s['delete_fps'])}"),
        ("cleanup command s", f"{s['command_s']:.1f}"),
        ("zero loss", yes(s["zero_loss"])),
        ("purged session gone", yes(s["purge_complete"])),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"purge benchmark ({s['repeat']} run(s) each, medians)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("  runs:")
    for r in s["runs"]:
        print(
            f"    {r['kind']:<8}  steady {rate(r['steady_fps']):>7} f/s"
            f"  longest commit gap {r['longest_stall_s']:.2f} s"
            f"  recorder cpu {r['recorder_cpu_s']:.1f} s  exit {r['exit_code']}"
            f"  loss-check {'ok' if r['loss']['ok'] else 'FAILED'}"
        )
        if r["kind"] == "purge":
            print(
                f"      during the purge {rate(r['during_purge_fps'])} f/s over"
                f" {r['overlap_s']:.1f} s ({r['covered']:.0%} of the purge),"
                f" during the deletes {rate(r['during_delete_fps'])} f/s"
                f" ({r['deletes_covered']:.0%} of them), after them {rate(r['during_rest_fps'])} f/s"
            )
            print(
                f"      purge {r['purge_s']:.1f} s ({rate(r['purge_fps'])} f/s), deletes"
                f" {r['delete_s']:.1f} s ({rate(r['delete_fps'])} f/s), command {r['command_s']:.1f} s,"
                f" purge-check {'ok' if r['purge']['ok'] else 'FAILED'}"
            )
            marks = ", ".join(f"{k} {v:.1f}" for k, v in r["timeline"].items())
            print(f"      s after the first firehose row: {marks}")
            print(
                f"      file: before {sizes(r['bytes_before'])},"
                f" right after {sizes(r['bytes_right_after'])}"
                f" ({mb(r['logical_bytes_right_after'])} in pages,"
                f" {r['free_pages_right_after']} free), after stop {sizes(r['bytes_after_stop'])}"
            )
            for problem in r["purge"]["problems"][:10]:
                print(f"      purge: {problem}")
        else:
            print(
                f"      file: before {sizes(r['bytes_before'])},"
                f" after stop {sizes(r['bytes_after_stop'])}"
            )
        print_run_problems(r)
        if r["other_log_lines"]:
            print(
                f"      log: {r['other_log_lines']} lines not JSON, first: {r['first_other_line']}"
            )
    if s["covered"] < 0.99:
        print(
            f"  note: the firehose's steady part covered {s['covered']:.0%} of the purge"
            " (more --frames cover more)"
        )
    print(targets_line(s["targets"]))


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
            built = build(args.purge_frames, root, deadline, args.poll, args.stall)
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
