"""A recorder ingesting a firehose while a cleanup action runs, sampled: the bench that
``bench/purge.py`` and ``bench/compact.py`` each give an action and its checks.

Measures the firehose's committed rate while the action cleans up one large finished
session, against the same firehose into a fresh copy of the same database with the
policy never asked for (the baseline), the two kinds alternating in one invocation;
medians. Method and numbers: docs/BENCHMARKS.md, "Purge during ingest".
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import harness as h
import psutil
from firehose import FirehoseRows, start_simulator
from recording import NO_PROXY, vm_hwm_kib

RECORDER = [sys.executable, "-m", "recorder"]
POLL_S = 0.05  # the read-only polls of the database
STALL_S = 60.0  # a run fails after this long without a new committed row
TARGET_RATIO = 0.5

# The policy, named "bench-<action>", matches the finished session only: the new
# firehose's session has no status.
CLEANUP_CONFIG = (
    '\n[cleanup]\npoll = "0.2s"\npolicies = [{ name = "bench-ACTION", action = "ACTION",'
    ' schedule = "every 1h", when = { status = ["completed"] } }]\n'
)

# The action's own checks, once the recorder stopped: (the copy, the audit's result) -> problems
Check = Callable[[sqlite3.Connection, str], list[str]]


@dataclass
class Bench:
    """One invocation: the built file (one finished session of the simulator's
    firehose, ``session_frames`` rows) and what each run does with a copy of it."""

    action: str
    path: Path
    sid: str
    session_frames: int
    frames: int  # the firehose's, each run
    ask_at: int  # committed firehose rows before the cleanup is asked for
    deadline: h.Deadline
    build_s: float = 0.0
    check: Check = lambda con, result: []


@dataclass
class Sample:
    t: float  # wall clock
    committed: int  # firehose rows committed: max(id) above the copy's last row


@dataclass
class Run:
    kind: str  # "baseline" or the action
    steady_fps: float  # over the firehose's 10-90 %
    gap_s: float  # the longest without a new committed row: 1-99 %, or during the action
    db_peak_mib: float  # VmHWM of the recorder's database process, just before the stop
    file_mb: float  # the main file and its WAL after the stop
    clean_stop: bool  # exit 0 and "recorder stopped" logged
    problems: list[str] = field(default_factory=list)
    during_fps: float = float("nan")  # inside both the audit row's span and the 10-90 %
    covered: float = float("nan")  # the share of that span inside the 10-90 %
    action_s: float = float("nan")  # the audit row's span
    removed: int = 0  # rows of the finished session gone


def observe(bench: Bench, db: Path, ask: bool) -> tuple[list[Sample], h.Child]:
    """A recorder on ``db`` records a fresh firehose; if ``ask``, ``recorder cleanup
    run`` asks it for the policy once ``ask_at`` rows are committed and is waited for.
    Returns the polls and the recorder, still running, once both are done."""
    workdir, base = db.parent, int((h.poll_row(db, "select max(id) from frames") or (0,))[0])
    sim, port = start_simulator(bench.frames, workdir, bench.deadline)
    config = workdir / "config.toml"
    policy = CLEANUP_CONFIG.replace("ACTION", bench.action)
    config.write_text(h.recorder_config(port, f"sqlite:///{db}") + NO_PROXY + policy)
    rec = h.Child("recorder", [*RECORDER, "run", "--config", str(config)], workdir)
    cleanup: h.Child | None = None
    samples: list[Sample] = []
    changed = time.monotonic()
    sql = "select max(id), (select count(*) from frames where type = 'stream_end' and id > ?)"
    try:
        while True:
            if (row := h.poll_row(db, sql + " from frames", (base,))) is not None:
                samples.append(Sample(time.time(), int(row[0] or 0) - base))
                if len(samples) == 1 or samples[-1].committed != samples[-2].committed:
                    changed = time.monotonic()
                if ask and samples[-1].committed >= bench.ask_at:
                    args = ["cleanup", "run", "--policy", f"bench-{bench.action}", "--config"]
                    cleanup = h.Child("cleanup", [*RECORDER, *args, str(config)], workdir)
                    ask = False
            if cleanup is not None and not cleanup.alive():
                if cleanup.proc.returncode != 0:
                    raise h.BenchError(f"`recorder cleanup run` failed:\n{cleanup.log()[-2000:]}")
                cleanup.kill()
                cleanup = None
            if row is not None and row[1] and not ask and cleanup is None:
                return samples, rec
            bench.deadline.check(f"a {bench.action} run")
            if not rec.alive():
                raise h.BenchError(f"recorder exited early:\n{rec.log()[-2000:]}")
            if time.monotonic() - changed > STALL_S:
                raise h.BenchError(f"no frame committed for {STALL_S:.0f} s")
            time.sleep(POLL_S)
    finally:
        if cleanup is not None:
            cleanup.kill()
        sim.stop()


def crossing(samples: list[Sample], n: float) -> float:
    """When the committed rows passed ``n``, interpolated between two polls."""
    for a, b in pairwise(samples):
        if a.committed < n <= b.committed:
            return a.t + (b.t - a.t) * (n - a.committed) / (b.committed - a.committed)
    raise h.BenchError(f"the polls never saw {n:.0f} committed rows")


def count_at(samples: list[Sample], t: float) -> float:
    """The committed rows at ``t``, interpolated between two polls."""
    for a, b in pairwise(samples):
        if a.t <= t <= b.t and b.t > a.t:
            return a.committed + (b.committed - a.committed) * (t - a.t) / (b.t - a.t)
    return float(samples[-1].committed if t > samples[-1].t else samples[0].committed)


def longest_gap(samples: list[Sample], lo: float, hi: float) -> float:
    """The longest time without a new committed row within [lo, hi] (poll resolution)."""
    changed = [b.t for a, b in pairwise(samples) if b.committed != a.committed]
    return max(b - a for a, b in pairwise([lo, *(t for t in changed if lo < t < hi), hi]))


def measure(bench: Bench, kind: str) -> Run:
    """One run on a fresh copy of the built file: the baseline, or under the action."""
    db = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=bench.path.parent)) / "bench.db"
    shutil.copyfile(bench.path, db)
    sql = "select (select max(id) from frames), (select max(id) from connections)"
    base = h.poll_row(db, sql) or (0, 0)
    samples, rec = observe(bench, db, kind != "baseline")
    found = [g.pid for c in psutil.Process(rec.pid).children() for g in c.children()]
    if len(found) != 1:  # the database process: service -> classifier -> it
        raise h.BenchError(f"expected one grandchild of the recorder, found {found}")
    peak_mib = vm_hwm_kib(found[0]) / 1024
    code = rec.terminate(min(90.0, max(bench.deadline.left(), 1.0)))
    stopped, logged = h.log_outcome(rec.log())
    for line in logged[:5]:  # its warnings and errors: shown, not counted as a failure
        print(f"  the recorder logged {line}", file=sys.stderr)
    rec.kill()
    n, wal = bench.frames, Path(f"{db}-wal")
    lo, hi = crossing(samples, n * 0.1), crossing(samples, n * 0.9)
    gap = longest_gap(samples, crossing(samples, n * 0.01), crossing(samples, n * 0.99))
    size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    run = Run(kind, 0.8 * n / (hi - lo), gap, peak_mib, size / 1e6, code == 0 and stopped)
    with closing(h.ro_connect(db)) as con:
        run.problems = verify_firehose(con, n, base) + check_rollups(con)
        sql = "select count(*) from frames where session_id = ?"
        run.removed = bench.session_frames - con.execute(sql, (bench.sid,)).fetchone()[0]
        if kind != "baseline":
            start, end, result = audit(con, f"bench-{bench.action}", run.problems)
            run.problems += bench.check(con, result)
    if kind != "baseline":
        a, b = max(start, lo), min(end, hi)
        if b - a < 0.5:
            t0 = samples[0].t
            raise h.BenchError(
                f"the {kind} ({start - t0:.1f}-{end - t0:.1f} s) and the firehose's 10-90 %"
                f" ({lo - t0:.1f}-{hi - t0:.1f} s) overlapped {b - a:.2f} s: raise --frames"
            )
        run.during_fps = (count_at(samples, b) - count_at(samples, a)) / (b - a)
        run.action_s, run.covered = end - start, (b - a) / (end - start)
        run.gap_s = longest_gap(samples, a, b)
    shutil.rmtree(db.parent, ignore_errors=True)  # each run holds a copy of the large file
    return run


def verify_firehose(con: sqlite3.Connection, frames: int, base: tuple[Any, ...]) -> list[str]:
    """The new firehose's rows, above the copy's last ``base`` (frame id, connection id):
    one new connection, each frame once, in a gap-free seq, byte-identical to the wire."""
    sql = "select id, frame_count from connections where id > ?"
    if len(links := con.execute(sql, (base[1],)).fetchall()) != 1:
        return [f"{len(links)} new connections, expected 1 (the link reconnected?)"]
    check = FirehoseRows(frames)
    sql = "select seq, type, opcode, size, payload, payload_bytes from frames"
    for row in con.execute(sql + " where id > ? order by id", (base[0],)):
        check.row(*row)
    return list(check.finish(int(links[0][1])).problems)


def check_rollups(con: sqlite3.Connection) -> list[str]:
    """Every connection's frame_count and every frame_days row equal to the rows."""
    from recorder.protocol.index import DAY_US

    sql = "select c.id, c.frame_count, count(f.id) from connections c"
    rows = con.execute(sql + " left join frames f on f.connection_id = c.id group by c.id")
    problems = [f"connection {c}: frame_count {n}, {m} rows" for c, n, m in rows if n != m]
    sql = "select day_us, type, direction, frames, bytes from frame_days where frames or bytes"
    kept = {r[:3]: r[3:] for r in con.execute(sql)}
    sql = f"select received_at_us - received_at_us % {DAY_US}, coalesce(type, ''), direction,"
    sql += " count(*), sum(size) from frames group by 1, 2, 3"
    counted = {r[:3]: r[3:] for r in con.execute(sql)}
    wrong = sorted(k for k in kept.keys() | counted.keys() if kept.get(k) != counted.get(k))
    return problems + [f"frame_days {k}: {kept.get(k)}, the rows {counted.get(k)}" for k in wrong]


def audit(con: sqlite3.Connection, policy: str, problems: list[str]) -> tuple[float, float, str]:
    """The policy's one audit row: its span (seconds since the epoch) and its result."""
    sql = "select started_us, ended_us, state, error, acted, actions from cleanup_runs"
    if not (rows := con.execute(sql + " where policy = ?", (policy,)).fetchall()):
        raise h.BenchError(f"no audit row for {policy}")
    results = [a.get("result", "") for a in json.loads(rows[0][5])]
    if len(rows) != 1 or rows[0][2:5] != ("done", None, 1) or len(results) != 1:
        problems.append(f"audit rows {[r[2:5] for r in rows]}, results {results}")
    return rows[0][0] / 1e6, rows[0][1] / 1e6, "".join(results[:1])


def main(
    action: str,
    doc: str | None,
    big: tuple[str, int],
    frames: int,
    ask_share: float,
    check: Callable[[Bench], Check],
) -> int:
    """Options (``big``: the finished session's, ``--frames``: the firehose's), the
    build, then the baseline and the action alternately, then finish(). Exits 1 if a
    frame was lost or a check failed, 2 if the bench itself failed."""
    from recorder.simulator.database import build, firehose

    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument(big[0], type=int, default=big[1], dest="big", help="the session's frames")
    p.add_argument("--frames", type=int, default=frames, help="firehose frames per run")
    p.add_argument("--repeat", type=int, default=2, help="runs of each kind (median)")
    h.common_options(p)
    args = p.parse_args()
    if args.frames < 1000 or args.big < 2 or args.repeat < 1:
        p.error(f"--frames at least 1000, {big[0]} at least 2, --repeat at least 1")
    # Generous: building, firehoses and the action at 2 000 frames/s, 60 s of starts a round.
    n, rounds = args.big, args.repeat
    deadline = h.Deadline(30 + n / 2000 + rounds * (60 + (2 * args.frames + n) / 2000))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs: list[Run] = []
    with h.scratch_dir(f"bench-{action}-", args.keep) as root:
        ask_at = max(1, int(args.frames * ask_share))
        bench = Bench(action, root / "big.db", "", 0, args.frames, ask_at, deadline)
        try:
            print(f"building {n:,} frames ...", file=sys.stderr, flush=True)
            # One session of firehose frames on the recorder's link, then its stream_end
            # and completed status, along the recorder's write path.
            built = build(bench.path, [firehose(n)])
            (bench.sid,) = built.sessions
            bench.build_s, bench.session_frames = built.seconds, n + 2
            sql = "select status, frame_count, (select count(*) from frames where session_id = ?)"
            row = h.poll_row(bench.path, sql + " from sessions where id = ?", (bench.sid,) * 2)
            if row != ("completed", n + 2, n + 2):
                raise h.BenchError(f"built: (status, frame_count, rows) {row}, not {n + 2}")
            bench.check = check(bench)
            for i in range(rounds):
                for kind in ("baseline", action):
                    print(f"run {i + 1}/{rounds}: {kind} ...", file=sys.stderr, flush=True)
                    runs.append(measure(bench, kind))
        except h.BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        finally:
            h.Child.kill_all()
    for run in runs:
        for problem in run.problems[:10]:
            print(f"FAILED ({run.kind}): {problem}", file=sys.stderr)
    h.finish(action, *summarize(bench, runs), args)
    return 1 if any(r.problems for r in runs) else 0


def summarize(
    bench: Bench, runs: list[Run]
) -> tuple[dict[str, Any], dict[str, str], dict[str, bool]]:
    """Medians of each kind, the headline (the action beside the baseline), the targets."""
    base, ours = ([r for r in runs if (r.kind == "baseline") == b] for b in (True, False))
    s: dict[str, Any] = {
        f"{k}_{kind}": float(statistics.median(getattr(r, k) for r in rs))
        for kind, rs in (("baseline", base), ("action", ours))
        for k in asdict(runs[0])
        if k not in ("kind", "problems")
    }
    ratio = s["during_fps_action"] / s["steady_fps_baseline"]

    def beside(key: str, unit: str) -> str:
        a, b = s[f"{key}_action"], s[f"{key}_baseline"]
        return f"{a / b:.2f} ({a:,.1f} / {b:,.1f} {unit})"

    during, normal, span = s["during_fps_action"], s["steady_fps_baseline"], s["action_s_action"]
    what = {"compact": "compaction"}.get(bench.action, bench.action)
    headline = {
        f"ingest during the {what}": f"{ratio:.2f} ({during:,.0f} / {normal:,.0f} f/s)",
        f"{what} (audit row)": f"{span:.1f} s, {s['covered_action']:.0%} of it measured",
        "longest commit gap": f"{s['gap_s_action']:.2f} s (baseline {s['gap_s_baseline']:.2f})",
        "database process peak RSS": beside("db_peak_mib", "MiB"),
        "file after the stop": beside("file_mb", "MB"),
        "rows removed": f"{s['removed_action']:,.0f} of the session's {bench.session_frames:,}",
    }
    targets = {
        "ratio_ge_0.5": ratio >= TARGET_RATIO,
        "zero_loss_and_checks": not any(r.problems for r in runs),
        "clean_stop": all(r.clean_stop for r in runs),
    }
    s |= {"ratio": ratio, "build_s": bench.build_s, "runs": [asdict(r) for r in runs]}
    return s, headline, targets
