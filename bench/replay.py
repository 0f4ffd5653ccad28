"""Replay benchmark: how soon does a long session start playing or showing, and in how
much memory?

Method:

1. A database holding one session of ``--frames`` frames (100 000 by default: stream
   chunks with a tool call and a status change now and then, on one proxied
   conversation) and as many frames of other sessions interleaved with it, written
   by the database process's own code (``Store.write_batch`` over rows from the
   classifier), so the rows and indexes are what the recorder writes.
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
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import REPO, scratch_dir, targets_line

SID = "session_1795692537464_replaybench"
T0_US = 1_795_692_537_000_000


def build(path: Path, frames: int) -> None:
    from recorder.db.migrations import upgrade_sync
    from recorder.db.sqlite import SqliteWriterDatabase
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier
    from recorder.protocol.frames import IN, OUT

    async def fill() -> None:
        db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{path}")
        await db.connect()
        await db.run(upgrade_sync)
        store = Store(db.dialect)
        ui = await db.run(
            store.open_connection, "proxy", "ws://127.0.0.1:8787/", T0_US, "127.0.0.1:5000"
        )
        link = await db.run(store.open_connection, "link", "ws://127.0.0.1:8787", T0_US)
        classifier = Classifier()
        seq = {ui: 0, link: 0}

        def frame(cid: int, direction: str, i: int, obj: dict[str, Any]) -> tuple[Any, ...]:
            seq[cid] += 1
            at = T0_US + i * 1000
            return (cid, seq[cid], direction, at, at * 1000, True, json.dumps(obj).encode())

        batch: list[tuple[Any, ...]] = [
            frame(
                ui,
                OUT,
                0,
                {
                    "type": "spawn_session",
                    "payload": {"orchestratorId": "vp_1", "task": {"description": "bench"}},
                },
            ),
            frame(
                ui,
                IN,
                0,
                {
                    "type": "session_status_update",
                    "session": {
                        "id": SID,
                        "status": "running",
                        "task": {"id": "task_1", "description": "bench"},
                    },
                },
            ),
        ]
        for i in range(1, frames):
            if i % 500 == 0:
                obj: dict[str, Any] = {
                    "type": "tool_call_start",
                    "data": {
                        "sessionId": SID,
                        "toolName": "read_file",
                        "toolInput": {"path": f"src/{i}.ts"},
                    },
                }
            else:
                obj = {
                    "type": "stream_chunk",
                    "data": {
                        "sessionId": SID,
                        "chunk": f"chunk {i} lorem ipsum dolor sit amet ",
                        "metadata": {"type": "text", "index": i},
                    },
                }
            batch.append(frame(ui, IN, i, obj))
            other = f"session_other_{i % 50}"
            batch.append(
                frame(
                    link,
                    IN,
                    i,
                    {"type": "stream_chunk", "data": {"sessionId": other, "chunk": "x"}},
                )
            )
            if len(batch) >= 4000:
                rows, index = classifier.rows_and_index(batch)
                await db.run(store.write_batch, rows, index)
                batch = []
        batch.append(
            frame(
                ui,
                IN,
                frames,
                {"type": "session_status_update", "session": {"id": SID, "status": "completed"}},
            )
        )
        rows, index = classifier.rows_and_index(batch)
        await db.run(store.write_batch, rows, index)
        await db.shutdown()

    asyncio.run(fill())


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


def played(db: Path) -> int:
    """The frames a replay of the session plays: the daemon's, on its one conversation."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        query = "select count(*) from frames where session_id = ? and direction = 'in'"
        return int(con.execute(query, (SID,)).fetchone()[0])
    finally:
        con.close()


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
    py = sys.executable
    with scratch_dir("replay-bench-", args.keep) as root:
        db = args.db or root / "recorder.db"
        t = time.monotonic()
        if not db.exists():
            # In a process of its own: a child's peak RSS counts what it had before exec,
            # so this process must stay small.
            subprocess.run([py, __file__, "--build", str(db), str(args.frames)], check=True)
        built = time.monotonic() - t
        env_db = str(db)
        replay = [py, "-m", "recorder", "replay", "--database", env_db, SID, "--instant"]
        commands = {
            "replay --instant (text)": replay,
            "replay --instant --format jsonl": [*replay, "--format", "jsonl"],
            "baseline: python -c sqlite3, first frame": [
                py,
                "-c",
                "import sqlite3,sys; c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro', uri=True);"
                "cur=c.execute('select payload from frames where session_id=? order by id', (sys.argv[2],));"
                "print(cur.fetchone()[0]); [r for r in cur]",
                env_db,
                SID,
            ],
        }
        commands["show"] = [py, "-m", "recorder", "show", "--database", env_db, SID]
        results: dict[str, dict[str, float]] = {}
        for name, argv in commands.items():
            measure(argv)  # warm-up: the file is in the page cache from here on
            runs = [measure(argv) for _ in range(args.repeat)]
            results[name] = {
                key: statistics.median(r[key] for r in runs)
                for key in ("first_s", "end_s", "bytes")
            }
            results[name]["rss_mb"] = max(r["rss_mb"] for r in runs)
        serve = [py, "-m", "recorder", "replay", "--database", env_db, SID, "--instant"]
        serve += ["--serve", "127.0.0.1:0"]
        replies = played(db)
        measure_serve(serve, replies)
        served = [measure_serve(serve, replies) for _ in range(args.repeat)]
        results["replay --serve --instant"] = {
            key: statistics.median(r[key] for r in served)
            for key in ("listen_s", "first_s", "end_s")
        }
        results["replay --serve --instant"]["rss_mb"] = max(r["rss_mb"] for r in served)
    text = results["replay --instant (text)"]
    serving = results["replay --serve --instant"]
    targets = {
        "first_output_lt_0.2s": text["first_s"] < 0.2,
        "served_first_frame_lt_0.2s": serving["first_s"] < 0.2,
        "rss_lt_100mb": all(r["rss_mb"] < 100 for n, r in results.items() if "baseline" not in n),
    }
    if args.json:
        print(
            json.dumps(
                {"frames": args.frames, "build_s": built, "results": results, "targets": targets},
                indent=2,
            )
        )
        return
    print(
        f"replay benchmark: a {args.frames:,}-frame session (plus as many other frames), "
        f"medians of {args.repeat}, built in {built:.1f} s"
    )
    print(f"  {'command':<44} {'first output':>12} {'to the end':>11} {'peak RSS':>9}")
    for name, r in results.items():
        print(f"  {name:<44} {r['first_s']:>10.3f} s {r['end_s']:>9.3f} s {r['rss_mb']:>6.1f} MB")
    print(f"  (--serve listened after {serving['listen_s']:.3f} s; first output: the first frame)")
    print(f"  machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(targets_line(targets))


if __name__ == "__main__":
    main()
