"""Tail benchmark: does ``recorder tail``, following a firehose, hold the writer back?

The recorder commits a firehose into a fresh SQLite file (``bench/ingest.py``'s method),
**alone** (the baseline) and **with** ``recorder tail --format jsonl`` following the
file from before the first frame, alternating ``--repeat`` times. Measured: the ingest
rate with tail / without (medians), the WAL's peak size at every poll, and the frames
tail had printed when the last was committed against the frames committed (it must
print every one, nothing else, and exit 0 on Ctrl-C). Targets: the ratio at least 0.9,
the WAL under 3 x ``WAL_RESTART_BYTES``. Method and numbers: docs/BENCHMARKS.md. Exits 1
if tail did not print every frame, 2 if the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness as h
import recording as rc
from databases import SqliteDatabase

from recorder.db.sqlite import WAL_RESTART_BYTES
from recorder.simulator.database import build

TARGET_RATIO = 0.9
TARGET_WAL_BYTES = 3 * WAL_RESTART_BYTES
CATCH_UP_S = 120.0
MIB = 1024 * 1024


class Output:
    """tail's output file, counted as it grows: frames (JSON lines) and stray lines (its
    stderr shares the file). Read only once the firehose is committed, so that reading
    it takes no CPU from the recorder while it is measured."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""
        self.frames = self.strays = 0

    def count(self) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = self.rest + f.read()
        self.offset += len(data) - len(self.rest)
        *lines, self.rest = data.split(b"\n")
        self.frames += sum(1 for line in lines if line.startswith(b"{"))
        self.strays += sum(1 for line in lines if not line.startswith(b"{"))
        return self.frames


def measure(frames: int, deadline: h.Deadline, with_tail: bool, root: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tail-" if with_tail else "alone-", dir=root))
    db = SqliteDatabase(workdir / "recorder.db")
    wal = Path(f"{db.path}-wal")
    build(db.path, [])  # migrated first (as `recorder db upgrade` does), for tail to open
    tail = None
    if with_tail:
        args = ["-m", "recorder", "tail", "--database", str(db.path), "--format", "jsonl"]
        tail = h.Child("tail", [sys.executable, *args, "--last", str(10**9)], workdir)
    out: dict[str, Any] = {"tail": with_tail, "wal_peak_mb": 0.0}

    def each_poll() -> None:
        if tail is not None:
            tail.check_alive()
        wal_mb = (wal.stat().st_size if wal.exists() else 0) / MIB
        out["wal_peak_mb"] = max(out["wal_peak_mb"], wal_mb)

    def committed(runs: list[dict[str, Any]]) -> None:
        out["committed"] = db.scalar("select count(*) from frames")
        if tail is not None:
            out.update(catch_up(tail, out["committed"], runs[0]["done"]))

    try:
        run = rc.record_firehose(db, workdir, frames, deadline, ("default",), each_poll, committed)
        return out | run[0]
    finally:
        if tail is not None:
            tail.stop()


def catch_up(tail: h.Child, committed: int, done: float) -> dict[str, Any]:
    """What tail had printed when the firehose was committed (``done``), and how long
    after that it printed the rest (up to CATCH_UP_S); then Ctrl-C, as a person stops it."""
    output = Output(tail.log_path)
    out: dict[str, Any] = {"printed_at_end": output.count()}
    until = time.monotonic() + CATCH_UP_S
    while output.count() < committed and time.monotonic() < until:
        time.sleep(rc.POLL_S)
    out["caught_up_s"] = max(tail.log_path.stat().st_mtime - done, 0.0)
    out["tail_exit"] = tail.terminate(30, signal.SIGINT)
    return out | {"printed": output.count(), "tail_strays": output.strays}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--frames", type=int, default=1_000_000, help="firehose frames per run")
    p.add_argument("--repeat", type=int, default=2, help="runs of each kind (median)")
    h.common_options(p)
    args = p.parse_args(argv)
    if args.frames < 1 or args.repeat < 1:
        p.error("--frames and --repeat must be at least 1")
    deadline = h.Deadline(2 * args.repeat * (60 + CATCH_UP_S + args.frames / 2000))
    with h.scratch_dir("bench-tail-", args.keep) as root:
        kinds = {
            "without tail": lambda r: measure(args.frames, deadline, False, r),
            "with tail": lambda r: measure(args.frames, deadline, True, r),
        }
        runs = h.alternate(args.repeat, root, kinds, args.json)
    alone, tailed = runs["without tail"], runs["with tail"]
    fps_alone, fps_tail = h.median(r["fps"] for r in alone), h.median(r["fps"] for r in tailed)
    wal_tail = max(r["wal_peak_mb"] for r in tailed)
    ratio = fps_tail / fps_alone
    complete = all(
        r["printed"] == r["committed"] and r["tail_exit"] == 0 and not r["tail_strays"]
        for r in tailed
    )
    wal_alone = max(r["wal_peak_mb"] for r in alone)
    headline = {
        "with/without tail": f"{ratio:.2f} ({fps_tail:,.0f} / {fps_alone:,.0f} frames/s)",
        "WAL peak": f"{wal_tail:.1f} MiB with tail ({wal_alone:.1f} without)",
        "tail printed": "; ".join(
            f"{r['printed_at_end']:,} when {r['committed']:,} were committed, then"
            f" {r['printed']:,} ({r['caught_up_s']:.1f} s later)"
            for r in tailed
        ),
        "every frame, nothing else": h.yes(complete),
    }
    summary = {"frames": args.frames, "ratio": ratio, "tail_printed_every_frame": complete}
    targets = {
        f"ratio_ge_{TARGET_RATIO}": ratio >= TARGET_RATIO,
        f"wal_lt_{TARGET_WAL_BYTES // MIB}MiB": wal_tail * MIB < TARGET_WAL_BYTES,
    }
    h.finish("tail", summary | {"runs": alone + tailed}, headline, targets, args)
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(h.run(main))
