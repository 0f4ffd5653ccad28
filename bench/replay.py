"""Replay benchmark: how soon does a long session start playing or showing, and in how
much memory?

Measures, each a process of its own, the time to its first output byte, to its end, and
its peak RSS: ``recorder replay S --instant`` (text and ``--format jsonl``), ``recorder
show S``, and ``recorder replay S --serve 127.0.0.1:0 --instant`` (when it listens, and
when a client has the first frame after the hello and every frame). Against: a bare
``python -c`` script that prints S's first frame with stdlib ``sqlite3``, in the same
run. S: ``--frames`` frames among 50 other sessions of as many frames in all, built by
``recorder.simulator.database.build``. A warm-up each, then medians of ``--repeat``
(peak RSS: the largest). Method, numbers, targets: docs/BENCHMARKS.md, "Replay".

    python bench/replay.py                   # 100 000 frames
    python bench/replay.py --frames 20000 --json
    python bench/replay.py --frames 1000000 --repeat 2 --db /var/tmp/replay-1m.db   # kept
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from harness import REPO, common_options, finish, scratch_dir

T0_US = 1_795_692_537_000_000
OTHERS = 50
SERVE = "replay --serve --instant"
BASELINE = "baseline: python -c sqlite3"  # it then holds every row: its RSS is no target


def build(path: Path, frames: int) -> None:
    """S, a frame a millisecond (its spawn's one long task), and :data:`OTHERS` sessions
    of as many frames in all, each over a fifth of S's span, one starting every 50th."""
    from recorder.simulator.database import SessionPlan, build

    minutes = frames / 60_000
    span = int(minutes * 60e6)
    per, extra = divmod(frames, OTHERS)
    others = (
        SessionPlan(per + (k < extra), T0_US + k * span // OTHERS, minutes / 5)
        for k in range(OTHERS)
    )
    build(path, [SessionPlan(frames, T0_US, minutes, tasks=0), *others])


def measure(argv: list[str]) -> dict[str, float]:
    """Start ``argv``; seconds to its first output byte and to its end, and its peak RSS."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(1)
    t_first = time.monotonic() - t0
    while proc.stdout.read(1 << 16):
        pass
    # wait4: this child's own rusage (RUSAGE_CHILDREN would be the largest child so far).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not first:
        raise SystemExit(f"{argv[:4]} failed: {proc.stderr.read().decode()}")
    return dict(first_s=t_first, end_s=time.monotonic() - t0, rss_mb=usage.ru_maxrss / 1024)


def measure_serve(argv: list[str], replies: int) -> dict[str, float]:
    """Start ``argv`` (a ``--serve`` replay); seconds until it listens, until a client
    has the first frame after the hello and every one of the ``replies``; peak RSS."""
    from websockets.sync.client import connect

    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    t_listen = time.monotonic() - t0
    if "as a daemon on ws://" not in line:
        proc.kill()
        raise SystemExit(f"{argv[:4]} did not listen: {line}{proc.stderr.read().decode()}")
    with connect(line.split()[-1], max_size=None, close_timeout=1) as ws:
        ws.recv()  # the hello
        ws.recv()
        t_first = time.monotonic() - t0
        for _ in range(replies - 1):
            ws.recv()
        t_end = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    return dict(listen_s=t_listen, first_s=t_first, end_s=t_end, rss_mb=usage.ru_maxrss / 1024)


def replayed(db: Path) -> tuple[str, int]:
    """S (the session with the most frames), and the frames a replay of it plays: the
    daemon's on its one conversation (not its copies of the broadcasts on the link)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        sql = "select id from sessions order by frame_count desc, id limit 1"
        sid = str(con.execute(sql).fetchone()[0])
        sql = "select count(*) from frames f join connections c on c.id = f.connection_id"
        sql += " where f.session_id = ? and f.direction = 'in' and c.role = 'proxy'"
        return sid, int(con.execute(sql, (sid,)).fetchone()[0])


def measure_all(db: Path, repeat: int) -> dict[str, dict[str, float]]:
    """A warm-up run of each (the file is in the page cache from then on), then
    ``repeat`` runs: medians, and the largest peak RSS."""
    sid, replies = replayed(db)
    py, base = sys.executable, [sys.executable, "-m", "recorder"]
    replay = [*base, "replay", "--database", str(db), sid, "--instant"]
    baseline = (
        "import sqlite3,sys; c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro', uri=True);"
        "q=c.execute('select payload from frames where session_id=? order by id', (sys.argv[2],));"
        "print(q.fetchone()[0]); [r for r in q]"
    )
    # The served replay last: it imports websockets here, which would count in the peak
    # RSS of every child forked after it (a child's counts what it had before exec).
    runs: dict[str, Callable[[], dict[str, float]]] = {
        "replay --instant (text)": lambda: measure(replay),
        "replay --instant --format jsonl": lambda: measure([*replay, "--format", "jsonl"]),
        BASELINE: lambda: measure([py, "-c", baseline, str(db), sid]),
        "show": lambda: measure([*base, "show", "--database", str(db), sid]),
        SERVE: lambda: measure_serve([*replay, "--serve", "127.0.0.1:0"], replies),
    }
    results = {}
    for name, once in runs.items():
        once()
        got = [once() for _ in range(repeat)]
        results[name] = {k: statistics.median(r[k] for r in got) for k in got[0]}
        results[name]["rss_mb"] = max(r["rss_mb"] for r in got)
    return results


def main() -> None:
    if sys.argv[1:2] == ["--build"]:
        build(Path(sys.argv[2]), int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--frames", type=int, default=100_000, help="frames in the replayed session")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--db", type=Path, help="build the database here, or reuse it if it exists")
    common_options(p)
    args = p.parse_args()
    if args.frames < 20 * OTHERS:
        p.error(f"--frames must be at least {20 * OTHERS}")
    with scratch_dir("replay-bench-", args.keep) as root:
        db = args.db or root / "recorder.db"
        if not db.exists():
            # In a process of its own: a child's peak RSS counts what it had before exec,
            # so this process must stay small.
            subprocess.run(
                [sys.executable, __file__, "--build", str(db), str(args.frames)], check=True
            )
        results = measure_all(db, args.repeat)
    headline = {
        name: f"first {r['first_s']:.3f} s, end {r['end_s']:.3f} s, {r['rss_mb']:.1f} MB"
        for name, r in results.items()
    }
    headline[SERVE] += f" (listens {results[SERVE]['listen_s']:.3f} s)"
    targets = {
        "first_output_lt_0.2s": results["replay --instant (text)"]["first_s"] < 0.2,
        "served_first_frame_lt_0.2s": results[SERVE]["first_s"] < 0.2,
        "rss_lt_100mb": all(r["rss_mb"] < 100 for n, r in results.items() if n != BASELINE),
    }
    finish("replay", {"frames": args.frames, "results": results}, headline, targets, args)


if __name__ == "__main__":
    main()
