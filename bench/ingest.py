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

Where the pieces are: the simulator and the bare client in ``firehose.py``, the zero-loss
check in ``firehose_rows.py``, the recorder process and the commit polls in
``recording.py``, the database in ``databases.py`` (all shared with other benchmarks);
one recorder measurement in ``ingest_run.py``, the summary and table in
``ingest_report.py``.

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
import signal
import sys

from databases import database_factory
from firehose import DEFAULT_SIZE, CeilingRun, run_ceiling, start_simulator
from firehose_rows import FirehoseRows, LossReport
from harness import BenchError, Child, Deadline, scratch_dir
from ingest_report import print_run_problems, print_table, summarize
from ingest_run import INSTANCES, Measurement, run_recorders
from recording import (
    END_SQL,
    LINK_SQL,
    NO_PROXY,
    SPAN_SQL,
    migrate,
    process_tree,
    steady_rate,
    vm_hwm_kib,
)

# What bench/purge.py, tail.py and compact.py import from here; it lives in the shared
# modules now, where new code should import it from.
__all__ = [
    "DEFAULT_SIZE",
    "END_SQL",
    "LINK_SQL",
    "NO_PROXY",
    "SPAN_SQL",
    "FirehoseRows",
    "LossReport",
    "migrate",
    "print_run_problems",
    "process_tree",
    "start_simulator",
    "steady_rate",
    "vm_hwm_kib",
]

DEFAULT_FRAMES = 200_000


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
