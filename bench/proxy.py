"""Proxy benchmark: what does recording through the proxy cost a UI, next to talking direct?

Method (three separate processes besides this driver, everything on 127.0.0.1):

* **The peer** stands in for the daemon (``proxy_peer.py``, a small ``websockets``
  server). It is used instead of ``recorder simulate`` because timing needs frames
  stamped at the moment they are sent, and the simulator has no hook for that. Frames
  from the peer are shaped like the protocol's ``stream_chunk``
  (``{"type":"stream_chunk","data":{"sessionId":...,"chunk":...,"metadata":{"type":"text",
  "index":i,"t":<monotonic_ns at send>}}}``), frames to it like a client's
  ``session_status`` request with the same ``index``/``t`` pair; both are padded to
  about 180 bytes. Only connections whose path starts with ``/bench`` take part (the
  proxy forwards the request path and query); the recorder's own passive link (path
  ``/``) is read and ignored.
* **The client** (``proxy_client.py``, its own process) runs one measurement per line
  of JSON it reads on stdin, and prints one line of JSON per result.
* **The recorder**: ``python -m recorder run --config <tmp>/config.toml`` with
  ``daemon.url`` at the peer, ``proxy.listen`` on a free port and a fresh SQLite file.

Every measurement is one WebSocket connection. ``down`` is peer -> client (what a UI
receives), ``up`` is client -> peer. The sender stamps each frame with
``time.monotonic_ns()`` right before ``send``; the receiver takes
``time.monotonic_ns()`` right after ``recv``. CLOCK_MONOTONIC is one clock for every
process on a machine, so the difference is the one-way latency (sender's send call,
kernel, proxy if any, receiver's receive path). The receiver only appends
``(receive time, bytes)`` to a list while frames arrive and parses the stamps
afterwards; the client and the peer run with the garbage collector off during a
measurement, so the harness adds as little noise as it can. Compression is off
everywhere (the proxy never negotiates it, so a direct connection must not either).

* **Latency** at a paced rate (1 000 and 10 000 frames/s): the sender sends
  ``rate/1000`` frames every millisecond on a ``loop.time()`` schedule (catching up if
  it wakes late) for a few seconds; the first 10 % of the frames are dropped as warm-up.
  p50, p99 and max per direction, direct and proxied; "added" is proxied minus direct,
  taken per repeat (the two ran back to back) and then the median over repeats.
* **Throughput**: N frames (default 100 000) as fast as the sender can send them
  (``await send`` per frame, so TCP back-pressure paces it). frames/s = N / (receive time
  of the last frame - receive time of the first), measured by the receiver. For proxied
  runs the driver also watches the database (read-only, every 50 ms, ``max(seq)`` of the
  run's connection) and reports "recorded" frames/s = N / (moment every row of the run
  is committed - first receive): forwarding runs ahead of the database by at most the
  writer's queue (``storage.queue_max_frames``) plus the batches in flight to the writer
  processes (up to ``IN_FLIGHT`` = 3 batches of ``storage.batch_size``,
  ``recorder/pipeline/writer.py``), then back-pressure couples the two.
* **Every frame recorded**: after the recorder has been stopped with SIGTERM (it must
  exit 0 and log ``recorder stopped``), each proxied measurement's connection row
  (``connections.role = 'proxy'``, found by the ``run=`` id in its URL) is read back with
  stdlib ``sqlite3``, read-only: per direction, the number of rows equals the number of
  frames sent that way (data and control frames: ``bench_go``, ``bench_done``,
  ``bench_result``) and a SHA-256 over every payload in ``seq`` order equals the one
  the client computed over what it sent and received, so every payload is byte-identical,
  not just a sample. The peer hashes what it sent / received too, so the benchmark also
  checks that the proxy forwarded every data frame unchanged.

Around every measurement the driver reads the CPU time (``/proc``) of the peer, the
client and the recorder, the recorder including its child processes (the recorder's
classifier and database processes), and reports CPU-seconds and "cores busy" (all three
per wall-second), which shows whether the machine, rather than one process, was the
limit. The output names the recorder code it measured (SHA-256 over every
``recorder/**/*.py``, subpackages included) and says if that code changed during the run.

Direct and proxied measurements of a point run back to back (direct first), point after
point, ``--repeat`` times; medians are reported, because small shared machines are
noisy. Before measuring, one short direct and proxied run each way warms everything up
(those are verified in the database too, but not reported).

Where the pieces are: the frames, their stamps and hashes in ``proxy_frames.py``; the
processes and one measurement in ``proxy_driver.py``, over the shared ``recording.py``
(the recorder process) and ``databases.py`` (its SQLite file); the check that every frame
was recorded in ``proxy_rows.py``; the summary and table in ``proxy_report.py``.

Usage::

    python bench/proxy.py               # about 60 s
    python bench/proxy.py --quick       # about 15 s
    python bench/proxy.py --json

Exits 0 when every frame was forwarded and recorded, 1 if one was lost or altered,
2 if the benchmark itself failed. Missing a latency or throughput target is reported,
not an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from harness import BenchError, Deadline, scratch_dir
from proxy_driver import Bench, Point
from proxy_report import print_table, summarize
from proxy_rows import verify
from report import source_digest


def plan(args: argparse.Namespace) -> list[tuple[str, Point]]:
    if args.quick:
        lat = [(1000, 1.0), (10000, 0.5)]
        n = args.frames or 20_000
    else:
        lat = [(1000, 3.0), (10000, 2.0)]
        n = args.frames or 100_000
    points: list[tuple[str, Point]] = []
    for rate, seconds in lat:
        for d in ("down", "up"):
            points.append((f"latency {d} {rate}/s", Point("latency", d, rate, int(rate * seconds))))
    for d in ("down", "up"):
        points.append((f"throughput {d}", Point("throughput", d, 0, n)))
    return points


async def drive(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    try:
        return await _drive(args, bench)
    finally:
        bench.close_stdout()


async def _drive(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    bench.start()
    points = plan(args)
    for d in ("down", "up"):
        for via in ("direct", "proxy"):
            await bench.measure(Point("warmup", d, 0, 5000), via, f"warm-up {d} {via}")
    warmups = len(bench.runs)
    for rep in range(args.repeat):
        for label, point in points:
            for via in ("direct", "proxy"):
                if not args.json:
                    print(f"[{rep + 1}/{args.repeat}] {label} {via}", file=sys.stderr, flush=True)
                await bench.measure(point, via, f"{label} {via} #{rep + 1}")
    recorder = bench.stop()
    recorded = verify(bench.db, bench.runs)
    return summarize(args, points, bench.runs[warmups:], recorder, recorded)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short runs (about 15 s in all)")
    p.add_argument(
        "--frames", type=int, default=0, help="throughput frames (100 000; quick 20 000)"
    )
    p.add_argument("--repeat", type=int, default=0, help="repeats of every point (2; quick 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--timeout", type=float, default=600.0, help="overall limit, seconds")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.frames < 0 or args.repeat < 0 or args.timeout <= 0:
        p.error("--frames and --repeat must not be negative, --timeout positive")
    args.repeat = args.repeat or (1 if args.quick else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.timeout)
    # Other work on the machine shows in the numbers; the load average says how much there was.
    args.loadavg_start = os.getloadavg()
    args.source_start = source_digest()
    # SIGTERM to the benchmark must still reach the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with scratch_dir("bench-proxy-", args.keep) as root:
        bench = Bench(root, deadline)
        try:
            summary = asyncio.run(asyncio.wait_for(drive(args, bench), deadline.left()))
        except (BenchError, TimeoutError) as exc:
            print(f"benchmark failed: {exc or 'overall timeout'}", file=sys.stderr)
            return 2
        finally:
            bench.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if summary["recorded"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
