"""Tail benchmark: does ``recorder tail``, following a firehose, hold the writer back?

What it measures, and against what: the recorder commits a firehose into a fresh
SQLite file (``bench/ingest.py``'s method and plumbing: ``recorder simulate --firehose N
--chunk-delay 0``, the recorder's link, the file polled read-only), twice per repeat in
the same run: **alone**, and **with** ``recorder tail --database FILE --format jsonl``
following the file from before the first frame (``--last`` larger than the file, so it
prints every frame the recorder commits). For each run:

1. Ingest rate: N / (when the poll first sees the ``stream_end`` row committed -
   ``received_at_us`` of the first chunk), as ``bench/ingest.py`` measures it. The
   result is the ratio with tail / without tail (medians of ``--repeat``).
2. The WAL's peak size: ``stat`` of ``recorder.db-wal`` at every poll (``--poll``,
   50 ms) while the firehose is committed. Without readers the writer starts the WAL
   over every ``WAL_RESTART_BYTES`` (64 MiB, ``recorder/db/sqlite.py``).
3. With tail: how many frames it had printed when ``stream_end`` was committed,
   against the frames committed; how long after that it printed the last one; the CPU
   seconds of tail and of the recorder's processes over the firehose. tail writes to a
   file (a reader that keeps up and costs nothing to watch: the file is only read
   once the firehose is committed); it must print every frame, nothing else, and
   exit 0 on SIGINT.

Both runs migrate the database first (:func:`recorder.simulator.database.build` with no
sessions: the recorder's migrations, as ``recorder db upgrade`` runs them), so that
tail can open it before the recorder starts. Targets (issue 17): with tail, ingest at least 0.9 of
its rate without; the WAL's peak under 3 x ``WAL_RESTART_BYTES``.

Usage::

    python bench/tail.py                      # 1 000 000 frames, 2 repeats
    python bench/tail.py --frames 2000000 --json

Exits 1 if tail failed or did not print every frame, 2 on a benchmark failure.
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
from dataclasses import asdict, dataclass
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
    scratch_dir,
    targets_line,
)
from ingest import END_SQL, LINK_SQL, NO_PROXY, SPAN_SQL, start_simulator, vm_hwm_kib

from recorder.db.sqlite import WAL_RESTART_BYTES
from recorder.simulator.database import build

TARGET_RATIO = 0.9
TARGET_WAL_BYTES = 3 * WAL_RESTART_BYTES
CATCH_UP_S = 120.0
MIB = 1024 * 1024


class Output:
    """tail's output file, counted as it grows: only after the firehose, so that
    reading it takes no CPU from the recorder while it is measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self.strays = 0  # lines that are not JSON objects: tail's stderr shares the file
        self._read = 0
        self._rest = b""

    def count(self) -> int:
        with open(self.path, "rb") as f:
            f.seek(self._read)
            data = self._rest + f.read()
        self._read += len(data) - len(self._rest)
        *complete, self._rest = data.split(b"\n")
        self.lines += len(complete)
        self.strays += sum(1 for line in complete if not line.startswith(b"{"))
        return self.lines - self.strays


@dataclass
class Run:
    tail: bool
    fps: float
    wal_peak_mb: float
    recorder_cpu_s: float
    committed: int = 0
    # With tail: what it had printed when stream_end was committed, when it printed
    # the last frame (seconds after that), its CPU seconds, peak RSS, exit code.
    printed_at_end: int = 0
    printed: int = 0
    caught_up_s: float = float("nan")
    tail_cpu_s: float = float("nan")
    tail_rss_mb: float = float("nan")
    tail_exit: int | None = None
    tail_strays: int = 0
    recorder_warnings: int = 0


def start_tail(db: Path, workdir: Path) -> tuple[Child, Output]:
    args = [sys.executable, "-m", "recorder", "tail", "--database", str(db)]
    args += ["--format", "jsonl", "--last", str(10**9)]
    tail = Child("tail", args, workdir, die_with_parent=True)
    return tail, Output(tail.log_path)


def stop_tail(tail: Child, output: Output, run: Run) -> None:
    """Ctrl-C, as a person stops it: it must exit 0 and say nothing."""
    run.tail_rss_mb = vm_hwm_kib(tail.pid) / 1024
    tail.proc.send_signal(signal.SIGINT)
    try:
        run.tail_exit = tail.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        run.tail_exit = None
    output.count()
    run.tail_strays = output.strays
    tail.kill()


def measure(frames: int, root: Path, deadline: Deadline, poll: float, with_tail: bool) -> Run:
    workdir = Path(tempfile.mkdtemp(prefix="tail-" if with_tail else "alone-", dir=root))
    db = workdir / "recorder.db"
    sim, port = start_simulator(frames, workdir, deadline)
    rec: Child | None = None
    tail: Child | None = None
    try:
        # Migrated first (as `recorder db upgrade` does it), so that tail can open it
        # before the recorder starts.
        build(db, [])
        output = None
        if with_tail:
            tail, output = start_tail(db, workdir)
        config = workdir / "config.toml"
        config.write_text(recorder_config(port, f"sqlite:///{db}") + NO_PROXY)
        args = [sys.executable, "-m", "recorder", "run", "--config", str(config)]
        rec = Child("recorder", args, workdir)
        cid = wait_for_link(rec, db, deadline, poll)
        run, done = watch_firehose(rec, tail, db, cid, deadline, poll)
        if tail is not None and output is not None:
            catch_up(tail, output, run, done, poll)
        span = poll_row(db, SPAN_SQL, (cid,))
        if span is None or span[0] is None:
            raise BenchError("no stream_chunk rows")
        run.fps = frames / (done - span[0] / 1e6)
        rec.terminate(60.0)
        _, warnings = log_outcome(rec.log())
        run.recorder_warnings = len(warnings)
        return run
    finally:
        for child in (tail, rec):
            if child is not None:
                child.kill()
        sim.stop()


def wait_for_link(rec: Child, db: Path, deadline: Deadline, poll: float) -> int:
    """The recorder's link connection, once it is recorded."""
    while (row := poll_row(db, LINK_SQL, ("default",))) is None or row[0] is None:
        deadline.check("waiting for the recorder to connect")
        if not rec.alive():
            raise BenchError(f"the recorder exited early:\n{rec.log()[-2000:]}")
        time.sleep(poll)
    return int(row[0])


def watch_firehose(
    rec: Child, tail: Child | None, db: Path, cid: int, deadline: Deadline, poll: float
) -> tuple[Run, float]:
    """Until the firehose's stream_end is committed: the WAL's peak, the recorder's CPU
    seconds, the frames committed; and when (wall clock) the poll saw stream_end."""
    wal = Path(f"{db}-wal")
    rec_cpu0 = cpu_seconds(rec.pid)
    tail_cpu0 = cpu_seconds(tail.pid, children=False) if tail else 0.0
    wal_peak = 0
    while not (poll_row(db, END_SQL, (cid,)) or (0,))[0]:
        deadline.check("waiting for the recorder to commit the firehose")
        if not rec.alive():
            raise BenchError(f"the recorder exited early:\n{rec.log()[-2000:]}")
        if tail is not None and not tail.alive():
            raise BenchError(f"tail exited early:\n{tail.log()[-2000:]}")
        wal_peak = max(wal_peak, wal.stat().st_size if wal.exists() else 0)
        time.sleep(poll)
    done = time.time()
    wal_peak = max(wal_peak, wal.stat().st_size if wal.exists() else 0)
    run = Run(tail is not None, 0.0, wal_peak / MIB, cpu_seconds(rec.pid) - rec_cpu0)
    committed = poll_row(db, "select count(*) from frames")
    run.committed = int(committed[0]) if committed else 0
    if tail is not None:
        run.tail_cpu_s = cpu_seconds(tail.pid, children=False) - tail_cpu0
    return run, done


def catch_up(tail: Child, output: Output, run: Run, done: float, poll: float) -> None:
    """What tail had printed when the firehose was committed, and how long after that
    it printed the rest (up to CATCH_UP_S); then it is stopped."""
    run.printed_at_end = output.count()
    until = time.monotonic() + CATCH_UP_S
    while output.count() < run.committed and time.monotonic() < until:
        time.sleep(poll)
    run.printed = output.count()
    if run.printed >= run.committed:
        run.caught_up_s = max(output.path.stat().st_mtime - done, 0.0)
    stop_tail(tail, output, run)


def summarize(frames: int, runs: list[Run]) -> dict[str, Any]:
    alone = [r for r in runs if not r.tail]
    tailed = [r for r in runs if r.tail]
    fps_alone = statistics.median(r.fps for r in alone)
    fps_tail = statistics.median(r.fps for r in tailed)
    wal_alone = max(r.wal_peak_mb for r in alone)
    wal_tail = max(r.wal_peak_mb for r in tailed)
    ratio = fps_tail / fps_alone
    complete = all(
        r.printed == r.committed and r.tail_exit == 0 and not r.tail_strays for r in tailed
    )
    return {
        "frames": frames,
        "fps_without_tail": fps_alone,
        "fps_with_tail": fps_tail,
        "ratio": ratio,
        "wal_peak_mb_without_tail": wal_alone,
        "wal_peak_mb_with_tail": wal_tail,
        "tail_printed_every_frame": complete,
        "targets": {
            f"ratio_ge_{TARGET_RATIO}": ratio >= TARGET_RATIO,
            f"wal_lt_{TARGET_WAL_BYTES // MIB}MiB": wal_tail * MIB < TARGET_WAL_BYTES,
        },
        "runs": [asdict(r) for r in runs],
    }


def print_report(s: dict[str, Any]) -> None:
    print(
        f"tail benchmark: a {s['frames']:,}-frame firehose into SQLite, "
        f"without and with `recorder tail` following it"
    )
    print(f"  {'':<14} {'frames/s':>10} {'WAL peak':>10} {'recorder CPU':>13}")
    for r in s["runs"]:
        label = "with tail" if r["tail"] else "without tail"
        print(
            f"  {label:<14} {r['fps']:>10,.0f} {r['wal_peak_mb']:>7.1f} MiB"
            f" {r['recorder_cpu_s']:>11.1f} s"
        )
        if r["tail"]:
            print(
                f"    tail printed {r['printed_at_end']:,} of {r['committed']:,} frames when the"
                f" last was committed, all {r['printed']:,} {r['caught_up_s']:.1f} s later;"
                f" tail CPU {r['tail_cpu_s']:.1f} s, peak RSS {r['tail_rss_mb']:.1f} MB,"
                f" exit {r['tail_exit']}"
            )
            if r["tail_strays"]:
                print(f"    tail wrote {r['tail_strays']} lines that are not frames (stderr)")
    print(
        f"  medians: {s['fps_without_tail']:,.0f} frames/s without tail,"
        f" {s['fps_with_tail']:,.0f} with: ratio {s['ratio']:.2f};"
        f" WAL peaks {s['wal_peak_mb_without_tail']:.1f} and {s['wal_peak_mb_with_tail']:.1f} MiB"
    )
    print(f"  machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(targets_line(s["targets"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--frames", type=int, default=1_000_000, help="firehose frames per run")
    p.add_argument("--repeat", type=int, default=2, help="runs of each kind (median)")
    p.add_argument("--poll", type=float, default=0.05, help="database poll interval, seconds")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.frames < 1 or args.repeat < 1 or args.poll <= 0:
        p.error("--frames and --repeat must be at least 1, --poll positive")
    deadline = Deadline(2 * args.repeat * (60 + CATCH_UP_S + args.frames / 2000))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs: list[Run] = []
    with scratch_dir("bench-tail-", args.keep) as root:
        try:
            for i in range(args.repeat):
                for with_tail in (False, True):
                    kind = "with tail" if with_tail else "without tail"
                    print(f"run {i + 1}/{args.repeat}: {kind} ...", file=sys.stderr, flush=True)
                    runs.append(measure(args.frames, root, deadline, args.poll, with_tail))
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        finally:
            Child.kill_all()
    summary = summarize(args.frames, runs)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    return 0 if summary["tail_printed_every_frame"] else 1


if __name__ == "__main__":
    sys.exit(main())
