"""Ingest benchmark: how fast does the recorder commit a firehose, next to a bare client?

Method (every process is separate, everything is on loopback):

1. A fresh simulated daemon per measurement:
   ``python -m recorder simulate --port 0 --firehose N --chunk-delay 0``. Right after
   its ``health_check_response`` it sends each new client N ``stream_chunk`` frames
   (``data.metadata.index`` 0..N-1, about 180 bytes each) and one ``stream_end``, as
   fast as the client reads them. The CLI turns off the simulator's in-memory journal,
   so the simulator does not keep the frames it sent; each measurement still gets a
   fresh simulator, so that no run inherits another's state.
2. Ceiling: a bare ``websockets`` client (``recv(decode=False)``, ``max_size=None``, in
   its own process) receives until ``stream_end`` and does nothing with the frames.
   Rate = N / (arrival of ``stream_end`` - arrival of the first ``stream_chunk``).
3. Recorder: ``python -m recorder run --config <tmp>/config.toml`` writing to a fresh
   database: a SQLite file (the default), or with ``--database postgresql://...`` a new
   database on that server (``CREATE DATABASE bench_ingest_<pid>_<n>``, dropped
   afterwards unless ``--keep``). The benchmark polls it every ``--poll`` seconds
   (SQLite: read-only, stdlib ``sqlite3``; PostgreSQL: one asyncpg connection) until the
   ``stream_end`` row of the recorder's link connection is committed; the writer commits
   frames in order, so that row means every chunk before it is committed too. Progress
   is the connection's ``frame_count``, which the writer updates in each batch's
   transaction.
   Rate = N / (wall clock when the poll first sees ``stream_end`` - ``received_at_us``
   of the first ``stream_chunk`` row). The poll adds at most one interval (50 ms) to
   the measured time, and the time includes the writer's final flush: the queue drains,
   and the last partial batch is committed once no frame has arrived for 10 ms
   (``BURST_END_QUIET`` in ``recorder/pipeline/batching.py``).
   Also reported: the receive rate (first to last ``received_at_us``), the commit lag
   after the last frame, and the steady commit rate between 10 % and 90 % of the frames
   (from the poll samples; no start-up, no final flush).
4. Zero loss: after the recorder stopped, the connection's rows are read back: exactly
   one connection of the recorder's ``storage.instance``, ``seq`` 1..M with no gap or duplicate, every index 0..N-1
   exactly once (``payload`` parsed as JSON), each payload byte-identical to what the
   simulator sends (regenerated with :func:`recorder.simulator.firehose_template`, which
   is itself checked against frames the bare client captured off the wire), opcode text,
   ``size`` equal to the payload's length, and exactly one ``stream_end``.
5. Peak RSS: ``VmHWM`` of the recorder's processes (the service, the classifier and the
   database process; the short-lived migration process has exited by then), summed,
   read right before SIGTERM; the recorder must then exit 0 and log ``recorder stopped``.
6. ``--recorders 2`` (PostgreSQL only): two recorders, ``storage.instance`` "bench-a" and
   "bench-b", each with its own fresh simulator, started together and writing into the
   same new database at once. Each one's rate and zero loss are measured as above on its
   own connection's rows; the combined rate is all their frames / (the last
   ``stream_end`` seen - the first chunk received), and "while both committed" is the
   sum of their commit rates over the time both were committing.

Measurements alternate (ceiling, recorder, ceiling, recorder, ...) ``--repeat`` times and
the medians are reported, because small shared machines are noisy. CPU seconds of each
process during the measured window are reported too, to show which process is the
bottleneck (a process near 1.0 CPU-s per wall-second is saturated).

Usage::

    python bench/ingest.py                      # 200 000 frames, 2 repeats
    python bench/ingest.py --frames 1000000 --json
    python bench/ingest.py --database postgresql://postgres@127.0.0.1:5432/postgres
    python bench/ingest.py --database postgresql://postgres@127.0.0.1:5432/postgres --recorders 2

Exits 1 if any frame was lost, duplicated or altered, 2 on a benchmark failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from databases import Database, database_factory, server_cpu_delta

# bench/purge.py, tail.py and compact.py import these from here: they moved to shared modules.
from firehose import DEFAULT_SIZE as DEFAULT_SIZE
from firehose import CeilingRun, run_ceiling
from firehose import start_simulator as start_simulator
from firehose_rows import FirehoseRows as FirehoseRows
from firehose_rows import LossReport as LossReport
from firehose_rows import verify_firehose
from harness import (
    BenchError,
    Child,
    Deadline,
    cpu_seconds,
    log_outcome,
    recorder_config,
    scratch_dir,
    targets_line,
    yes,
)

TARGET_RATIO = 0.5
TARGET_RSS_MB = 150.0
TARGET_RSS_FRAMES = 1_000_000
DEFAULT_FRAMES = 200_000
# storage.instance of each recorder with --recorders N (one recorder keeps the default).
INSTANCES = ("bench-a", "bench-b", "bench-c", "bench-d")

# --- processes ---------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """The pid and all its descendants (the recorder: service -> classifier -> database)."""
    import psutil

    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


# --- the ceiling: a bare client ----------------------------------------------------------


# --- the recorder ------------------------------------------------------------------------


# No proxy: nothing here uses it, and two recorders cannot both have its default port.
NO_PROXY = """
[proxy]
enabled = false
"""


# The benchmark's reads, the same SQL on both databases.
LINK_SQL = "select min(id) from connections where instance = ?"
END_SQL = "select count(*) from frames where type = 'stream_end' and connection_id = ?"
PROGRESS_SQL = "select frame_count from connections where id = ?"
SPAN_SQL = (
    "select min(received_at_us), max(received_at_us) from frames"
    " where connection_id = ? and type in ('stream_chunk', 'stream_end')"
)


@dataclass
class RecorderRun:
    frames: int
    seconds: float
    fps: float
    receive_fps: float
    steady_fps: float
    commit_lag_s: float
    poll_interval_s: float
    peak_rss_mb: float
    recorder_cpu_s: float
    simulator_cpu_s: float
    exit_code: int | None
    logged_stopped: bool
    warnings: list[str]
    loss: LossReport
    instance: str = "default"
    first_us: int = 0
    done: float = 0.0


@dataclass
class Measurement:
    """One measurement: one or more recorders into one fresh database, at once."""

    database: str
    runs: list[RecorderRun]
    # All the recorders' frames / (the last stream_end seen - the first chunk received).
    combined_fps: float
    # The sum of the recorders' commit rates while all of them were committing (NaN: one).
    overlap_fps: float
    # Between the first chunks the recorders received.
    start_spread_s: float
    # The database server's processes over the window (NaN for SQLite: in the recorder).
    database_cpu_s: float


@dataclass
class Recording:
    """A recorder of a measurement while it runs, with its own simulator."""

    instance: str
    workdir: Path
    sim: Child
    port: int
    rec: Child | None = None
    cid: int | None = None
    done: float = 0.0
    progress: list[tuple[float, int]] = field(default_factory=list)


def run_recorders(
    frames: int,
    root: Path,
    deadline: Deadline,
    poll: float,
    stall: float,
    make_database: Callable[[Path], Database],
    count: int = 1,
) -> Measurement:
    workdir = Path(tempfile.mkdtemp(prefix="recorder-", dir=root))
    names = ["default"] if count == 1 else list(INSTANCES[:count])
    recs: list[Recording] = []
    db = make_database(workdir)
    try:
        try:
            for name in names:
                wd = workdir if count == 1 else workdir / name
                wd.mkdir(exist_ok=True)
                sim, port = start_simulator(frames, wd, deadline)
                recs.append(Recording(name, wd, sim, port))
            if count > 1:
                # Recorders started together on a new database would each migrate it, and
                # two migrations at once collide (the second one's writer does not start):
                # migrate it first, so that they start together on a migrated database.
                migrate(db.url, workdir, deadline)
            # Started together: with several, the firehoses overlap.
            for r in recs:
                config = r.workdir / "config.toml"
                config.write_text(recorder_config(r.port, db.url, r.instance) + NO_PROXY)
                args = [sys.executable, "-m", "recorder", "run", "--config", str(config)]
                r.rec = Child("recorder", args, r.workdir)

            # Connected (migrations done, firehose starting): start the CPU clocks.
            for r in recs:
                while (cid := db.scalar(LINK_SQL, r.instance)) is None:
                    deadline.check("waiting for the recorder to connect")
                    check_alive(r)
                    time.sleep(poll)
                r.cid = cid
            # The recorder's whole process tree, as at the end of the window.
            rec_cpu0 = [tree_cpu(r) for r in recs]
            sim_cpu0 = [cpu_seconds(r.sim.pid, children=False) for r in recs]
            db_cpu0 = db.server_cpu()

            # Committed: the stream_end row of each recorder's connection is visible.
            pending = list(recs)
            last_top = {r.instance: -1 for r in recs}
            last_progress = {r.instance: time.monotonic() for r in recs}
            while pending:
                for r in list(pending):
                    if db.scalar(END_SQL, r.cid):
                        r.done = time.time()
                        pending.remove(r)
                        continue
                    deadline.check("waiting for the recorder to commit")
                    check_alive(r)
                    top = db.scalar(PROGRESS_SQL, r.cid) or 0
                    r.progress.append((time.time(), top))
                    if top != last_top[r.instance]:
                        last_top[r.instance], last_progress[r.instance] = top, time.monotonic()
                    elif time.monotonic() - last_progress[r.instance] > stall:
                        raise BenchError(
                            f"{r.instance}: no frame committed for {stall:.0f} s"
                            f" (stuck at {top} rows)"
                        )
                if pending:
                    time.sleep(poll)
            # The recorder is a process tree: service -> classifier -> database.
            trees = [process_tree(r.rec.pid) for r in recs if r.rec is not None]
            rec_cpu = [tree_cpu(r) - c0 for r, c0 in zip(recs, rec_cpu0, strict=True)]
            sim_cpu = [
                cpu_seconds(r.sim.pid, children=False) - c0
                for r, c0 in zip(recs, sim_cpu0, strict=True)
            ]
            db_cpu = server_cpu_delta(db_cpu0, db.server_cpu()) if db_cpu0 else float("nan")
            # Summed peaks: an upper bound on the tree's peak (they need not coincide).
            peaks = [sum(vm_hwm_kib(p) for p in pids) for pids in trees]
            # One at a time: a second SIGTERM during the drain would stop it at once.
            exits, logs = [], []
            for r in recs:
                assert r.rec is not None
                exits.append(r.rec.terminate(min(90.0, max(deadline.left(), 1.0))))
                logs.append(r.rec.log())
        finally:
            for r in recs:
                if r.rec is not None:
                    r.rec.kill()
                r.sim.stop()

        runs = []
        for i, r in enumerate(recs):
            stopped, warnings = log_outcome(logs[i])
            first_us, last_us = db.row(SPAN_SQL, r.cid) or (None, None)
            if first_us is None:
                raise BenchError(f"{r.instance}: no stream_chunk rows")
            loss = verify_firehose(db, r.instance, frames)
            first = first_us / 1e6
            seconds = r.done - first
            runs.append(
                RecorderRun(
                    frames=frames,
                    seconds=seconds,
                    fps=frames / seconds,
                    receive_fps=frames / max((last_us - first_us) / 1e6, 1e-9),
                    steady_fps=steady_rate(r.progress, frames),
                    commit_lag_s=r.done - last_us / 1e6,
                    poll_interval_s=poll,
                    peak_rss_mb=peaks[i] / 1024,
                    recorder_cpu_s=rec_cpu[i],
                    simulator_cpu_s=sim_cpu[i],
                    exit_code=exits[i],
                    logged_stopped=stopped,
                    warnings=warnings,
                    loss=loss,
                    instance=r.instance,
                    first_us=first_us,
                    done=r.done,
                )
            )
    finally:
        db.close()
    first = min(r.first_us for r in runs) / 1e6
    return Measurement(
        database=db.kind,
        runs=runs,
        combined_fps=frames * len(runs) / (max(r.done for r in runs) - first),
        overlap_fps=overlap_rate(recs, runs),
        start_spread_s=(max(r.first_us for r in runs) - min(r.first_us for r in runs)) / 1e6,
        database_cpu_s=db_cpu,
    )


def migrate(url: str, workdir: Path, deadline: Deadline) -> None:
    args = [sys.executable, "-m", "recorder", "db", "upgrade", "--database", url]
    child = Child("migrate", args, workdir)
    try:
        code = child.proc.wait(timeout=max(min(deadline.left(), 120.0), 1.0))
    except subprocess.TimeoutExpired:
        raise BenchError("`recorder db upgrade` did not finish") from None
    finally:
        child.kill()
    if code != 0:
        raise BenchError(f"`recorder db upgrade` failed:\n{child.log()[-2000:]}")


def check_alive(r: Recording) -> None:
    assert r.rec is not None
    if not r.rec.alive():
        raise BenchError(f"recorder {r.instance} exited early:\n{r.rec.log()[-2000:]}")


def tree_cpu(r: Recording) -> float:
    assert r.rec is not None
    return sum(cpu_seconds(p, children=False) for p in process_tree(r.rec.pid))


def overlap_rate(recs: list[Recording], runs: list[RecorderRun]) -> float:
    """Rows/s all recorders committed together while every one of them was committing
    (from the later first chunk to the earlier stream_end); NaN for one recorder."""
    if len(recs) < 2:
        return float("nan")
    start = max(r.first_us for r in runs) / 1e6
    end = min(r.done for r in runs)
    total = 0.0
    for r in recs:
        inside = [p for p in r.progress if start <= p[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return float("nan")
        total += (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
    return total


def steady_rate(progress: list[tuple[float, int]], frames: int) -> float:
    """Committed rows/s between 10 % and 90 % of the frames: no start-up, no final flush."""
    lo = next((p for p in progress if p[1] >= frames // 10), None)
    hi = next((p for p in progress if p[1] >= frames * 9 // 10), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return float("nan")
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


# --- the report --------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(
    frames: int, ceilings: list[CeilingRun], measurements: list[Measurement]
) -> dict[str, Any]:
    recorders = [r for m in measurements for r in m.runs]
    count = len(measurements[0].runs)
    ceiling = median([c.fps for c in ceilings])
    recorder = median([r.fps for r in recorders])
    peak = max(r.peak_rss_mb for r in recorders)
    zero_loss = all(r.loss.ok for r in recorders)
    clean_stop = all(r.exit_code == 0 and r.logged_stopped for r in recorders)
    ratio = recorder / ceiling
    targets: dict[str, Any] = {}
    if count == 1:
        targets["ratio_ge_0.5"] = ratio >= TARGET_RATIO
    targets["zero_loss"] = zero_loss
    targets["clean_stop"] = clean_stop
    if frames >= TARGET_RSS_FRAMES:
        targets["peak_rss_lt_150mb"] = peak < TARGET_RSS_MB
    summary: dict[str, Any] = {
        "frames": frames,
        "repeat": len(measurements),
        "ceiling_fps": ceiling,
        "recorder_fps": recorder,
        "ratio": ratio,
        "zero_loss": zero_loss,
        "recorder_peak_rss_mb": peak,
        "avg_frame_bytes": median([c.avg_frame_bytes for c in ceilings]),
        "recorder_receive_fps": median([r.receive_fps for r in recorders]),
        "recorder_steady_fps": median([r.steady_fps for r in recorders]),
        "recorder_commit_lag_s": median([r.commit_lag_s for r in recorders]),
        "targets": targets,
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "database": measurements[0].database,
        "recorders": count,
    }
    if count > 1:
        combined = median([m.combined_fps for m in measurements])
        summary["per_recorder"] = {
            name: {
                "fps": median([r.fps for r in runs]),
                "ratio": median([r.fps for r in runs]) / ceiling,
                "steady_fps": median([r.steady_fps for r in runs]),
                "receive_fps": median([r.receive_fps for r in runs]),
                "zero_loss": all(r.loss.ok for r in runs),
            }
            for name in [r.instance for r in measurements[0].runs]
            for runs in [[r for r in recorders if r.instance == name]]
        }
        summary["combined_fps"] = combined
        summary["combined_ratio"] = combined / ceiling
        summary["overlap_fps"] = median([m.overlap_fps for m in measurements])
        summary["start_spread_s"] = median([m.start_spread_s for m in measurements])
    summary["ceiling_runs"] = [asdict(c) for c in ceilings]
    summary["recorder_runs"] = [asdict(r) for r in recorders]
    summary["measurements"] = [
        {k: v for k, v in asdict(m).items() if k != "runs"} for m in measurements
    ]
    return summary


def print_table(s: dict[str, Any]) -> None:
    if s["recorders"] > 1:
        print_multi_table(s)
        return
    rows = [
        ("frames", f"{s['frames']:,}"),
        ("avg frame bytes", f"{s['avg_frame_bytes']:.1f}"),
        ("ceiling frames/s (bare client)", f"{s['ceiling_fps']:,.0f}"),
        ("recorder frames/s (committed)", f"{s['recorder_fps']:,.0f}"),
        ("ratio recorder/ceiling", f"{s['ratio']:.2f}  (target >= {TARGET_RATIO})"),
        ("zero loss", yes(s["zero_loss"])),
        ("recorder peak RSS MB", f"{s['recorder_peak_rss_mb']:.1f}  (target < {TARGET_RSS_MB:g})"),
        ("recorder frames/s (received)", f"{s['recorder_receive_fps']:,.0f}"),
        ("recorder frames/s (10-90% steady)", f"{s['recorder_steady_fps']:,.0f}"),
        ("commit lag after last frame s", f"{s['recorder_commit_lag_s']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    into = " into PostgreSQL" if s["database"] == "postgresql" else ""
    print(f"ingest benchmark{into} ({s['repeat']} run(s) each, medians)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("  runs:")
    print_ceiling_runs(s)
    for r, m in zip(s["recorder_runs"], s["measurements"], strict=True):
        print_recorder_run("recorder ", r, m["database_cpu_s"])
    print(targets_line(s["targets"]))


def print_multi_table(s: dict[str, Any]) -> None:
    per = s["per_recorder"]
    rows = [
        ("frames per recorder", f"{s['frames']:,}"),
        ("avg frame bytes", f"{s['avg_frame_bytes']:.1f}"),
        ("ceiling frames/s (bare client)", f"{s['ceiling_fps']:,.0f}"),
    ]
    for name, p in per.items():
        rows.append((f"{name} frames/s (committed)", f"{p['fps']:,.0f}  (ratio {p['ratio']:.2f})"))
    rows += [
        (
            "combined frames/s (committed)",
            f"{s['combined_fps']:,.0f}  (ratio {s['combined_ratio']:.2f})",
        ),
        ("combined while all committed", f"{s['overlap_fps']:,.0f}"),
        ("first chunks apart s", f"{s['start_spread_s']:.2f}"),
        ("zero loss (every recorder)", yes(s["zero_loss"])),
        ("recorder peak RSS MB (highest)", f"{s['recorder_peak_rss_mb']:.1f}"),
    ]
    for name, p in per.items():
        rows.append((f"{name} frames/s (10-90% steady)", f"{p['steady_fps']:,.0f}"))
    width = max(len(k) for k, _ in rows)
    print(
        f"ingest benchmark, {s['recorders']} recorders into one PostgreSQL database"
        f" ({s['repeat']} run(s) each, medians)"
    )
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("  runs:")
    print_ceiling_runs(s)
    n = s["recorders"]
    for i, m in enumerate(s["measurements"]):
        for r in s["recorder_runs"][i * n : (i + 1) * n]:
            print_recorder_run(f"{r['instance']:<9}", r, float("nan"))
        print(
            f"    combined  {m['combined_fps']:>9,.0f} f/s  while all committed"
            f" {m['overlap_fps']:,.0f} f/s  postgres cpu {m['database_cpu_s']:.1f} s"
        )
    print(targets_line(s["targets"]))


def print_ceiling_runs(s: dict[str, Any]) -> None:
    for c in s["ceiling_runs"]:
        print(
            f"    ceiling   {c['fps']:>9,.0f} f/s  {c['seconds']:6.2f} s"
            f"  cpu client {c['client_cpu_s']:.1f} s, simulator {c['simulator_cpu_s']:.1f} s"
        )


def print_recorder_run(label: str, r: dict[str, Any], database_cpu_s: float) -> None:
    server = "" if database_cpu_s != database_cpu_s else f", postgres {database_cpu_s:.1f} s"
    print(
        f"    {label} {r['fps']:>9,.0f} f/s  {r['seconds']:6.2f} s"
        f"  cpu recorder {r['recorder_cpu_s']:.1f} s, simulator {r['simulator_cpu_s']:.1f} s"
        f"{server}  rss {r['peak_rss_mb']:.0f} MB  exit {r['exit_code']}"
        f"  loss-check {'ok' if r['loss']['ok'] else 'FAILED'}"
    )
    print_run_problems(r)


def print_run_problems(r: dict[str, Any]) -> None:
    """Under a run's line: what its loss check found and what the recorder logged."""
    for problem in r["loss"]["problems"][:10]:
        print(f"      loss: {problem}")
    for warning in r["warnings"][:5]:
        print(f"      log: {warning}")


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="firehose frames per run")
    p.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help="frame size; the simulator CLI only sends its default (180)",
    )
    p.add_argument("--repeat", type=int, default=2, help="measurements of each kind (median)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--poll", type=float, default=0.05, help="database poll interval, seconds")
    p.add_argument(
        "--stall", type=float, default=60.0, help="fail after this long without a commit"
    )
    p.add_argument("--timeout", type=float, default=0.0, help="overall limit, s (0: from --frames)")
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (and the databases)"
    )
    p.add_argument(
        "--database",
        metavar="URL",
        help="a PostgreSQL server (postgresql://user@host:port/db, any database to connect to):"
        " each measurement records into a new database there; default: a SQLite file",
    )
    p.add_argument(
        "--recorders",
        type=int,
        default=1,
        help="recorders writing into the one database at once, each with its own firehose"
        " (more than 1: PostgreSQL only)",
    )
    args = p.parse_args(argv)
    if args.frames < 1 or args.repeat < 1 or args.poll <= 0:
        p.error("--frames and --repeat must be at least 1, --poll positive")
    if args.size != DEFAULT_SIZE:
        p.error(f"`recorder simulate` has no frame-size option; only --size {DEFAULT_SIZE} works")
    if args.database is not None:
        scheme = args.database.partition("://")[0].partition("+")[0]
        if scheme not in ("postgresql", "postgres"):
            p.error("--database takes a PostgreSQL URL (postgresql://...); SQLite is the default")
    if not 1 <= args.recorders <= len(INSTANCES):
        p.error(f"--recorders takes 1 to {len(INSTANCES)}")
    if args.recorders > 1 and args.database is None:
        p.error("--recorders above 1 needs --database postgresql://... (one SQLite file has one)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Generous: 20 s of start-up per measurement, and at least 2 000 frames/s.
    seconds = args.timeout or 2 * args.repeat * (20 + args.frames * args.recorders / 2000)
    deadline = Deadline(seconds)
    # SIGTERM to the benchmark must still reach the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    make_database = database_factory(args.database, args.keep)
    ceilings: list[CeilingRun] = []
    measurements: list[Measurement] = []
    with scratch_dir("bench-ingest-", args.keep) as root:
        try:
            for i in range(args.repeat):
                for kind in ("ceiling", "recorder"):
                    if not args.json:
                        print(f"run {i + 1}/{args.repeat}: {kind} ...", file=sys.stderr, flush=True)
                    if kind == "ceiling":
                        ceilings.append(run_ceiling(args.frames, root, deadline))
                    else:
                        measurements.append(
                            run_recorders(
                                args.frames,
                                root,
                                deadline,
                                args.poll,
                                args.stall,
                                make_database,
                                args.recorders,
                            )
                        )
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        finally:
            Child.kill_all()
    summary = summarize(args.frames, ceilings, measurements)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if summary["zero_loss"] else 1


if __name__ == "__main__":
    sys.exit(main())
