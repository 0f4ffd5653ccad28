"""Replay benchmark: how soon does a long session start playing or showing, and in how
much memory?

Method:

1. A database holding one session of ``--frames`` frames (100 000 by default, over
   ``--frames`` milliseconds: a UI's conversation through the proxy as the simulator
   plays it, one long task streaming chunks and tool calls with their results) and
   50 other sessions of as many frames in all, interleaved with it, built by
   :func:`recorder.simulator.database.build` along the recorder's own write path (the
   classifier, the writer's ``Store``), so the rows and indexes are what the recorder
   writes. The session replayed is the one with the most frames.
2. ``python -m recorder replay SESSION --instant`` (text, and ``--format jsonl``), as a
   subprocess with its output on a pipe: the time from starting the process to the
   first byte of output, to the end, and the process's peak RSS (``ru_maxrss``).
3. ``python -m recorder show SESSION``, the same way: its first byte comes once the
   story is told, so that is its time to answer.
4. ``python -m recorder replay SESSION --serve 127.0.0.1:0 --instant``: the time until it
   says it listens (stderr), until a client (``websockets``' sync client, in this
   process) has the first frame after the hello, and until it has every frame the
   replay plays (counted in the database beforehand); then SIGTERM, and the process's
   peak RSS.
5. Beside them, the baseline: a bare ``python -c`` script that opens the file with
   stdlib ``sqlite3`` and prints the first frame of the session, same interpreter.

Each is run ``--repeat`` times after a warm-up run; medians are reported (peak RSS: the
largest). Targets: first output (and the served first frame) under 0.2 s; peak RSS
under 100 MB for each command, whatever the session's length.

Usage::

    python bench/replay.py                   # 100 000 frames
    python bench/replay.py --frames 20000 --json
    python bench/replay.py --frames 1000000 --repeat 1     # show and --serve on 1 M frames
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness import REPO, scratch_dir, targets_line

if TYPE_CHECKING:
    from recorder.simulator.database import SessionPlan

T0_US = 1_795_692_537_000_000
OTHERS = 50


def build(path: Path, frames: int) -> None:
    """Run in a process of its own (``--build``): see :func:`main`."""
    from recorder.simulator.database import build

    build(path, layout(frames))


def layout(frames: int) -> list[SessionPlan]:
    """The session replayed, a frame a millisecond (its spawn's one long task), and
    :data:`OTHERS` sessions of as many frames in all, each over a fifth of its span,
    one starting every 50th."""
    from recorder.simulator.database import SessionPlan

    minutes = frames / 60_000
    span = int(minutes * 60e6)
    per, extra = divmod(frames, OTHERS)
    others = [
        SessionPlan(per + (k < extra), T0_US + k * span // OTHERS, minutes / 5)
        for k in range(OTHERS)
    ]
    return [SessionPlan(frames, T0_US, minutes, tasks=0), *others]


def measure(argv: list[str]) -> dict[str, float]:
    """Start ``argv``; seconds to its first output byte and to its end, and its peak RSS."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    first = stdout.read(1)
    t_first = time.monotonic() - t0
    size = len(first) + sum(len(chunk) for chunk in iter(lambda: stdout.read(1 << 16), b""))
    # wait4: this child's own rusage (RUSAGE_CHILDREN would be the largest child so far).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    t_end = time.monotonic() - t0
    if proc.returncode != 0 or not first:
        raise SystemExit(f"{argv[:4]} failed: {stderr.read().decode()}")
    return {"first_s": t_first, "end_s": t_end, "bytes": size, "rss_mb": usage.ru_maxrss / 1024}


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
    return {
        "listen_s": t_listen,
        "first_s": t_first,
        "end_s": t_end,
        "rss_mb": usage.ru_maxrss / 1024,
    }


def replayed(db: Path) -> tuple[str, int]:
    """The session replayed (the one with the most frames), and the frames a replay of
    it plays: the daemon's, on its one conversation (its copies of the broadcasts on the
    link, while the conversation was open, are not played)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        sql = "select id from sessions order by frame_count desc, id limit 1"
        sid = str(con.execute(sql).fetchone()[0])
        sql = (
            "select count(*) from frames f join connections c on c.id = f.connection_id"
            " where f.session_id = ? and f.direction = 'in' and c.role = 'proxy'"
        )
        return sid, int(con.execute(sql, (sid,)).fetchone()[0])
    finally:
        con.close()


def commands(db: Path, sid: str) -> dict[str, list[str]]:
    """What is measured with :func:`measure`, by name."""
    py = sys.executable
    replay = [py, "-m", "recorder", "replay", "--database", str(db), sid, "--instant"]
    baseline = (
        "import sqlite3,sys; c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro', uri=True);"
        "cur=c.execute('select payload from frames where session_id=? order by id', (sys.argv[2],));"
        "print(cur.fetchone()[0]); [r for r in cur]"
    )
    return {
        "replay --instant (text)": replay,
        "replay --instant --format jsonl": [*replay, "--format", "jsonl"],
        "baseline: python -c sqlite3, first frame": [py, "-c", baseline, str(db), sid],
        "show": [py, "-m", "recorder", "show", "--database", str(db), sid],
    }


def measure_all(db: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Every command, then the served replay: a warm-up run (the file is in the page
    cache from then on), then ``repeat`` runs; medians, and the largest peak RSS."""
    sid, replies = replayed(db)
    results: dict[str, dict[str, float]] = {}
    for name, argv in commands(db, sid).items():
        measure(argv)
        runs = [measure(argv) for _ in range(repeat)]
        results[name] = {
            key: statistics.median(r[key] for r in runs) for key in ("first_s", "end_s", "bytes")
        }
        results[name]["rss_mb"] = max(r["rss_mb"] for r in runs)
    serve = [sys.executable, "-m", "recorder", "replay", "--database", str(db), sid]
    serve += ["--instant", "--serve", "127.0.0.1:0"]
    measure_serve(serve, replies)
    served = [measure_serve(serve, replies) for _ in range(repeat)]
    results["replay --serve --instant"] = {
        key: statistics.median(r[key] for r in served) for key in ("listen_s", "first_s", "end_s")
    }
    results["replay --serve --instant"]["rss_mb"] = max(r["rss_mb"] for r in served)
    return results


def targets(results: dict[str, dict[str, float]]) -> dict[str, bool]:
    text = results["replay --instant (text)"]
    serving = results["replay --serve --instant"]
    return {
        "first_output_lt_0.2s": text["first_s"] < 0.2,
        "served_first_frame_lt_0.2s": serving["first_s"] < 0.2,
        "rss_lt_100mb": all(r["rss_mb"] < 100 for n, r in results.items() if "baseline" not in n),
    }


def report(frames: int, repeat: int, built: float, results: dict[str, dict[str, float]]) -> None:
    serving = results["replay --serve --instant"]
    print(
        f"replay benchmark: a {frames:,}-frame session (plus as many other frames), "
        f"medians of {repeat}, built in {built:.1f} s"
    )
    print(f"  {'command':<44} {'first output':>12} {'to the end':>11} {'peak RSS':>9}")
    for name, r in results.items():
        print(f"  {name:<44} {r['first_s']:>10.3f} s {r['end_s']:>9.3f} s {r['rss_mb']:>6.1f} MB")
    print(f"  (--serve listened after {serving['listen_s']:.3f} s; first output: the first frame)")
    print(f"  machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(targets_line(targets(results)))


def main() -> None:
    if sys.argv[1:2] == ["--build"]:
        build(Path(sys.argv[2]), int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description="replay start time and memory")
    p.add_argument("--frames", type=int, default=100_000, help="frames in the replayed session")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument(
        "--db", type=Path, help="build the database here, or reuse it if it exists (--frames)"
    )
    args = p.parse_args()
    if args.frames < 20 * OTHERS:
        p.error(f"--frames must be at least {20 * OTHERS}")
    with scratch_dir("replay-bench-", args.keep) as root:
        db = args.db or root / "recorder.db"
        t = time.monotonic()
        if not db.exists():
            # In a process of its own: a child's peak RSS counts what it had before exec,
            # so this process must stay small.
            argv = [sys.executable, __file__, "--build", str(db), str(args.frames)]
            subprocess.run(argv, check=True)
        built = time.monotonic() - t
        results = measure_all(db, args.repeat)
    if args.json:
        summary = {"frames": args.frames, "build_s": built, "results": results}
        print(json.dumps(summary | {"targets": targets(results)}, indent=2))
        return
    report(args.frames, args.repeat, built, results)


if __name__ == "__main__":
    main()
