"""Query benchmark: how fast do the query commands answer on a big database, next to sqlite3?

Method:

1. **The database, by the recorder's write path**:
   :func:`recorder.simulator.database.build` with :func:`~recorder.simulator.database.spread`
   creates and migrates a fresh SQLite file and records into it ``--sessions`` (default
   frames / 500) sessions over ``--days`` (default: 30 days per 10 000 sessions, so 6
   for 1 000 000 frames and 30 for 5 000 000: the same recording, for longer), session
   k starting at an even step after 2026-10-01T00:00Z and lasting ``--session-minutes``
   (30): about 7 sessions run at once, so a session's frames are interleaved with
   others' in the table, as in a real recording. Each session is a UI's conversation
   through the recorder's proxy as the simulator plays it (its frame builders, task
   plans and session objects; seed 1): ``spawn_session``, ``--template-tasks`` (27)
   ``execute_task`` requests at once, the first task's stream, the session's end and
   ``session_spawned``, then the other tasks' streams (chunks, tool calls with their
   results) and ``task_completed``/``task_failed``; the first task's stream is made up
   with more chunks to the session's share of ``--frames``, which the database holds
   exactly. One link connection (the recorder's: its opening exchange, the daemon's
   status broadcasts of every session) spans the recording. The frames go through the
   classifier and the writer's ``Store`` (a child process classifies, as the
   recorder's does), so the rows, indexes and rollups are the recorder's own. The
   database is kept under ``--workdir`` and reused while the parameters and the code
   that decides what is written (``WRITER_SOURCES``: the migrations, the writer's, the
   simulator's) are the same (``--rebuild`` forces it).
3. **Commands**, each a real process: the ``recorder`` console script of this
   interpreter's environment (``python -m recorder`` if it has none), stdout a pipe read
   to the end, stderr captured; wall time from before the process starts to after it
   exits. The environment is the caller's without ``RECORDER_*``, ``PYTHONUNBUFFERED``
   and ``PYTHONDONTWRITEBYTECODE``: as with an installed recorder, modules load from
   bytecode, kept under ``<workdir>/pycache`` (``PYTHONPYCACHEPREFIX``), not in the
   tree. S is the session in the middle of the database (about 500 frames)::

       frames --session S --limit 0 --format jsonl   show S   sessions   frames --last 100
       tasks --session S   connections   status   stats

   Each run must exit 0 and print what it should (the number of JSON lines and their
   ids and session for ``frames``, the session and its frame count for ``show``, the
   newest rows for the lists, the totals for ``status`` and ``stats``).
4. **Baseline**: ``python -c`` with the same interpreter: stdlib ``sqlite3`` with
   ``mode=ro`` runs the same SQL as the command (the statements of
   ``recorder/db/recordings.py``; where the command reads frames in pages,
   ``recorder/db/pages.py``, one statement for them all) and prints every row with
   ``repr``; it must print the expected number of rows. Overhead = ours - baseline.
5. For each command: one warm-up run of ours and of the baseline (which also writes
   their bytecode), one cold run of each, then ``--repeat`` (5) warm runs alternating
   ours and the baseline; **warm** is their median. **Cold**: before each cold run the
   page cache is emptied: as root, ``sync`` and ``echo 1 > /proc/sys/vm/drop_caches``
   (the whole cache: the interpreter and the libraries start from disk too); else
   ``posix_fadvise(DONTNEED)`` on the database files only. The share of the database
   file still cached (``mincore``) is reported; if more than 1 % is, the first run on a
   fresh copy of the file is timed instead (which may itself still be cached: the
   report says so).

Targets: ``frames --session``, ``show``, ``tasks --session`` and ``status`` under 0.3 s
warm, at every size measured (by default 1 000 000 frames over 2 000 sessions and
5 000 000 over 10 000: the same sessions, five times as many of them), and ``stats``
under 1 s warm.

Usage::

    python bench/query.py                        # 1 000 000 and 5 000 000 frames
    python bench/query.py --frames 5000000 --json
    python bench/query.py --workdir /var/tmp/qb --rebuild

Exits 1 if a command failed or printed the wrong thing, 2 if the benchmark itself failed
(building included), else 0; a missed target is printed, not an exit status.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import REPO, BenchError, Deadline, targets_line, yes
from query_commands import TARGET_SCOPED_S, TARGET_STATS_S, commands, expectations
from query_measure import PYCACHE, Measurer, cli_prefix

DEFAULT_SIZES = (1_000_000, 5_000_000)
FRAMES_PER_SESSION = 500
DEFAULT_DAYS = 30
DEFAULT_SESSION_MINUTES = 30.0
DEFAULT_TEMPLATE_TASKS = 27
SEED = 1
# Bump when the database built changes: cached databases of another version are rebuilt.
BUILD_VERSION = 2


# --- 1. the database ---------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a cached database was built from: it is rebuilt when any of it changes."""

    frames: int
    sessions: int
    days: int
    session_minutes: float
    tasks: int
    writer: str  # writer_digest()
    version: int = BUILD_VERSION


# What decides the rows a recording holds (the query side, which the benchmark
# measures, is left out: changing it must not cost a rebuild).
WRITER_SOURCES = (
    "alembic/",
    "recorder/db/",
    "recorder/pipeline/",
    "recorder/protocol/",
    "recorder/simulator/",
    "recorder/times.py",
)
QUERY_SIDE = (
    "recorder/db/follow.py",
    "recorder/db/pages.py",
    "recorder/db/readonly.py",
    "recorder/db/recordings.py",
    "recorder/db/rows.py",
)


def writer_digest() -> str:
    """SHA-256 (12 hex digits) over the code that decides what a recording holds
    (:data:`WRITER_SOURCES`). A cached database built by other code is built again."""
    h = hashlib.sha256()
    for top in ("recorder", "alembic"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(WRITER_SOURCES) and not rel.startswith(QUERY_SIDE):
                h.update(rel.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def build_database(spec: Spec, path: Path) -> dict[str, Any]:
    """Build ``path`` (see the module doc); returns how long it took and what it holds."""
    from recorder.simulator.database import build, spread

    tmp = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    try:
        plans = spread(
            spec.frames, spec.sessions, spec.days, spec.session_minutes, tasks=spec.tasks
        )
        built = build(tmp, plans, seed=SEED)
    except ValueError as exc:  # the sizes do not fit: say which
        raise BenchError(f"cannot build {spec.frames:,} frames: {exc}") from None
    if built.frames != spec.frames or len(built.sessions) != spec.sessions:
        raise BenchError(f"built {built.frames} frames and {len(built.sessions)} sessions")
    if Path(f"{tmp}-wal").exists():
        raise BenchError(f"{tmp}: the writer left its WAL behind")
    os.replace(tmp, path)
    return {
        "seconds": built.seconds,
        "steps": built.steps,
        "bytes": path.stat().st_size,
        "frames_per_second": round(built.frames / max(built.seconds, 1e-3)),
        "frames_per_session": sorted({p.frames for p in plans}, reverse=True),
    }


def ensure_database(
    spec: Spec, workdir: Path, rebuild: bool, quiet: bool
) -> tuple[Path, dict[str, Any]]:
    """The cached database for ``spec``, built if missing, stale or ``rebuild``."""
    path = workdir / f"query-{spec.frames}.db"
    meta_path = path.with_suffix(".json")
    if not rebuild and path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == asdict(spec):
            meta["build"]["cached"] = True
            if not quiet:
                print(f"using {path} (built earlier)", file=sys.stderr, flush=True)
            return path, meta["build"]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
    if not quiet:
        print(f"building {path} ...", file=sys.stderr, flush=True)
    build = build_database(spec, path)
    build["cached"] = False
    meta_path.write_text(json.dumps({"spec": asdict(spec), "build": build}, indent=2))
    return path, build


# --- the report ----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def print_size(s: dict[str, Any]) -> None:
    b = s["build"]
    e = s["session"]
    print(
        f"\n{s['frames']:,} frames, {s['sessions']:,} sessions over {s['days']} days,"
        f" {s['db_bytes'] / 2**30:.2f} GiB: {s['db']}"
    )
    how = "cached: built earlier in" if b.get("cached") else "built in"
    steps = ", ".join(f"{k} {v:g}" for k, v in b["steps"].items())
    print(f"  {how} {b['seconds']:.0f} s ({steps})")
    print(f"  S = {e['sid']} ({e['frames']} frames, {e['tasks']} tasks)")
    warm = f"warm, ms (median of {s['repeat']})"
    print(f"  {'':<18}  {warm:<26}  {'cold, ms':<26}")
    print(
        f"  {'command':<18}  {'ours':>6} {'base':>6} {'overhead':>8}    {'ours':>6} {'base':>6}"
        f" {'overhead':>8}    {'target':>6}  met"
    )
    for r in s["results"]:
        target = "-" if r["target_s"] is None else f"< {r['target_s'] * 1000:.0f}"
        met = "-" if r["target_s"] is None else yes(r["ours_warm_s"] < r["target_s"])
        print(
            f"  {r['command']:<18}  {ms(r['ours_warm_s']):>6} {ms(r['base_warm_s']):>6}"
            f" {ms(r['ours_warm_s'] - r['base_warm_s']):>8}    {ms(r['ours_cold_s']):>6}"
            f" {ms(r['base_cold_s']):>6} {ms(r['ours_cold_s'] - r['base_cold_s']):>8}"
            f"    {target:>6}  {met}"
        )
    colds = [c for r in s["results"] for c in (r["ours_cold"], r["base_cold"]) if c]
    methods = ", ".join(sorted({c["method"] for c in colds}))
    worst = max((c["resident"] for c in colds), default=float("nan"))
    print(
        f"  cold: {methods}; at most {worst:.1%} of the database file was in the page cache"
        " when a cold run started"
    )
    for r in s["results"]:
        for problem in r["problems"][:5]:
            print(f"  FAILED {r['command']}: {problem}")


def print_report(summary: dict[str, Any]) -> None:
    print(f"query benchmark ({summary['cli']}; baseline: python -c with sqlite3, mode=ro)")
    for s in summary["sizes"]:
        print_size(s)
    print()
    print(targets_line(summary["targets"]))


def summarize(sizes: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    targets: dict[str, bool] = {}
    for s in sizes:
        scoped = [r for r in s["results"] if r["target_s"] == TARGET_SCOPED_S]
        targets[f"session+status<0.3s@{s['frames']:,}"] = all(
            r["ours_warm_s"] < r["target_s"] for r in scoped
        )
    stats = [r for s in sizes for r in s["results"] if r["target_s"] == TARGET_STATS_S]
    targets["stats<1s"] = all(r["ours_warm_s"] < r["target_s"] for r in stats)
    return {
        "cli": " ".join(cli_prefix()),
        "repeat": repeat,
        "sizes": sizes,
        "targets": targets,
        "ok": not any(r["problems"] for s in sizes for r in s["results"]),
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
    }


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--frames",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="database sizes to measure, in frames (default: 1000000 5000000)",
    )
    p.add_argument(
        "--sessions",
        type=int,
        default=0,
        help=f"sessions per database (default: frames / {FRAMES_PER_SESSION})",
    )
    p.add_argument(
        "--days",
        type=int,
        default=0,
        help=f"days the sessions span (default: {DEFAULT_DAYS} per 10 000 sessions)",
    )
    p.add_argument(
        "--session-minutes",
        type=float,
        default=DEFAULT_SESSION_MINUTES,
        help="how long each session lasts (sets how many overlap)",
    )
    p.add_argument(
        "--template-tasks",
        type=int,
        default=DEFAULT_TEMPLATE_TASKS,
        help="execute_task requests in each session",
    )
    p.add_argument("--repeat", type=int, default=5, help="warm runs of each (median)")
    p.add_argument(
        "--cold",
        choices=["auto", "drop", "copy"],
        default="auto",
        help="auto: drop the page cache (drop_caches, else fadvise), a fresh copy if the file"
        " stays cached; drop: drop it whatever stays; copy: always a fresh copy",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recorder-bench-query",
        help="where the databases are built and kept (default: %(default)s)",
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the databases")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--timeout", type=float, default=0.0, help="overall limit, s (0: from --frames)")
    args = p.parse_args(argv)
    if min(args.frames) < 1 or args.repeat < 1 or args.days < 0 or args.template_tasks < 1:
        p.error("--frames, --repeat and --template-tasks must be at least 1")
    if args.session_minutes <= 0:
        p.error("--session-minutes must be positive")
    return args


def measure_size(
    args: argparse.Namespace, writer: str, frames: int, deadline: Deadline
) -> dict[str, Any]:
    sessions = args.sessions or max(frames // FRAMES_PER_SESSION, 1)
    days = args.days or -(-sessions * DEFAULT_DAYS // 10_000)
    spec = Spec(frames, sessions, days, args.session_minutes, args.template_tasks, writer)
    db, build = ensure_database(spec, args.workdir, args.rebuild, args.json)
    deadline.check("building")
    e = expectations(db)
    measurer = Measurer(db, args.workdir, args.cold, args.repeat)
    results = []
    for cmd in commands(e):
        deadline.check(f"measuring {cmd.name}")
        if not args.json:
            print(f"  {frames:,}: {cmd.name} ...", file=sys.stderr, flush=True)
        results.append(asdict(measurer.measure(cmd, e)))
    return {
        "frames": frames,
        "sessions": sessions,
        "days": days,
        "db": str(db),
        "db_bytes": db.stat().st_size,
        "build": build,
        "repeat": args.repeat,
        "session": {"sid": e.sid, "frames": e.session_frames, "tasks": e.session_tasks},
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.timeout or 1200 + sum(args.frames) / 2000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.workdir.mkdir(parents=True, exist_ok=True)
    PYCACHE.append(args.workdir / "pycache")
    if not args.json:
        print(f"workdir {args.workdir}", file=sys.stderr, flush=True)
    sizes = []
    try:
        writer = writer_digest()
        for frames in args.frames:
            sizes.append(measure_size(args, writer, frames, deadline))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    summary = summarize(sizes, args.repeat)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
