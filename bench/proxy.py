"""Proxy benchmark: what recording through the proxy costs a UI, against talking to the
daemon directly in the same run: added one-way latency (p99) at 1 000 and 10 000
frames/s and the throughput ratio, per direction; every proxied frame recorded,
byte-identical. Each point runs direct then proxied, back to back, ``--repeat`` times;
medians. Method and numbers: docs/BENCHMARKS.md. Exits 1 if a frame was lost, altered
or not recorded, 2 if the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import harness as h
from databases import Database, SqliteDatabase
from proxy_wire import LISTENING, client, digest
from recording import Recorder

WIRE = str(Path(__file__).resolve().parent / "proxy_wire.py")
TARGET_ADDED_P99_MS = 2.0  # at 1 000 frames/s
TARGET_RATIO = 0.5
FRAMES_SQL = (
    "select payload, payload_bytes, opcode from frames"
    " where connection_id = ? and direction = ? order by seq"
)


class Bench:
    """The peer and the recorder of a run, and the measurements so far."""

    def __init__(self, root: Path, deadline: h.Deadline) -> None:
        self.deadline, self.runs = deadline, list[dict[str, Any]]()
        self.db = SqliteDatabase(root / "bench.db")
        self.peer = h.Child("peer", [sys.executable, WIRE], root, die_with_parent=True)
        self.peer_port = int(h.wait_for_log(self.peer, LISTENING, deadline.left()).group(1))
        self.proxy_port = h.free_port()
        config = h.recorder_config(self.peer_port, self.db.url)
        config += f'\n[proxy]\nlisten = "127.0.0.1:{self.proxy_port}"\n'
        self.recorder = Recorder(root, config, die_with_parent=True)
        self.recorder.wait_started(deadline)

    def measure(self, kind: str, direction: str, rate: int, n: int, via: str) -> None:
        """One measurement on one connection, direct to the peer or through the proxy,
        with the garbage collector off."""
        label = f"{kind} {direction} {rate or ''} {via}"
        self.deadline.check(label)
        port = self.peer_port if via == "direct" else self.proxy_port
        run = len(self.runs) + 1
        url = f"ws://127.0.0.1:{port}/bench?dir={direction}&rate={rate}&n={n}&run={run}"
        limit = min(max(self.deadline.left(), 1.0), n / (rate or 2000) + 60)  # >= 2 000/s
        gc.collect()
        gc.disable()
        try:
            result = asyncio.run(asyncio.wait_for(client(url, direction, rate, n), limit))
        except Exception as exc:  # whatever stopped the client stops the benchmark
            raise h.BenchError(f"{label}: {type(exc).__name__}: {exc}") from None
        finally:
            gc.enable()
        result |= {"label": label, "kind": kind, "dir": direction, "rate": rate, "via": via}
        self.runs.append(result | {"n": n, "run": run})


def verify(db: Database, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each proxied run's connection (by the ``run=`` in its URL): per direction, the rows
    and a SHA-256 over their payloads in ``seq`` order as on the wire; closed, counted."""
    problems, checked = [], 0
    conns = {
        int(parse_qs(urlsplit(url).query)["run"][0]): (cid, count, closed)
        for cid, url, count, closed in db.rows(
            "select id, url, frame_count, closed_at_us from connections where role = 'proxy'"
        )
    }
    for r in runs:
        if not r["forwarded_ok"] or not r["receiver"].get("in_order"):
            problems.append(f"{r['label']}: data frames missing, altered or out of order")
        if r["via"] != "proxy":
            continue
        cid, count, closed = conns.pop(r["run"], (None, 0, None))
        if closed is None or count != r["sent"][0] + r["received"][0]:
            problems.append(f"{r['label']}: connection row missing, open or miscounted")
        for direction, (want, sha) in (("out", r["sent"]), ("in", r["received"])):
            rows = list(db.rows(FRAMES_SQL, cid, direction))
            checked += len(rows)
            got = digest(p.encode() if p is not None else bytes(b) for p, b, _ in rows)
            if len(rows) != want or got != sha or any(op != 1 for *_, op in rows):
                problems.append(f"{r['label']}: {direction} rows differ from the wire")
    if conns:
        problems.append(f"{len(conns)} proxy connections no measurement made")
    return {"ok": not problems, "frames_checked": checked, "problems": problems}


def summarize(
    runs: list[dict[str, Any]], recorded: dict[str, Any], stopped: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str], dict[str, bool]]:
    """Direct and proxied ran back to back: what the proxy adds is taken per pair, then
    the median over the repeats."""

    def pairs(kind: str, d: str, rate: int = 0) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        same = [r["receiver"] for r in runs if (r["kind"], r["dir"], r["rate"]) == (kind, d, rate)]
        return list(zip(same[0::2], same[1::2], strict=True))  # (direct, proxied)

    summary: dict[str, Any] = {"recorded": recorded, "recorder": stopped, "runs": runs}
    headline: dict[str, str] = {}
    for rate, d in itertools.product((1000, 10000), ("down", "up")):
        lat = [(x["lat_ms"], y["lat_ms"]) for x, y in pairs("latency", d, rate)]
        direct, proxied = h.median(x["p99"] for x, _ in lat), h.median(y["p99"] for _, y in lat)
        summary[f"added_p50_ms_{d}_{rate}"] = h.median(y["p50"] - x["p50"] for x, y in lat)
        added = summary[f"added_p99_ms_{d}_{rate}"] = h.median(y["p99"] - x["p99"] for x, y in lat)
        headline[f"added p99 {d} at {rate}/s"] = f"{added:+.2f} ms ({proxied:.2f} / {direct:.2f})"
    for d in ("down", "up"):
        tp = pairs("throughput", d)
        direct, proxied = h.median(x["fps"] for x, _ in tp), h.median(y["fps"] for _, y in tp)
        ratio = summary[f"throughput_ratio_{d}"] = proxied / direct
        headline[f"throughput {d}"] = f"{ratio:.2f} ({proxied:,.0f} / {direct:,.0f} frames/s)"
    checked = f"{recorded['frames_checked']:,} frames"
    headline["every frame recorded"] = f"{h.yes(recorded['ok'])} ({checked})"
    targets = {
        "added_p99_lt_2ms_at_1000": all(
            summary[f"added_p99_ms_{d}_1000"] < TARGET_ADDED_P99_MS for d in ("down", "up")
        ),
        "throughput_ratio_ge_0.5": all(
            summary[f"throughput_ratio_{d}"] >= TARGET_RATIO for d in ("down", "up")
        ),
        "every_frame_recorded": recorded["ok"],
        "clean_stop": stopped["exit_code"] == 0 and stopped["logged_stopped"],
    }
    return summary, headline, targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short runs (about 15 s in all)")
    p.add_argument(
        "--frames", type=int, default=0, help="throughput frames (100 000; quick 20 000)"
    )
    p.add_argument("--repeat", type=int, default=0, help="repeats of every point (2; quick 1)")
    h.common_options(p)
    args = p.parse_args(argv)
    if args.frames < 0 or args.repeat < 0:
        p.error("--frames and --repeat must not be negative")
    repeat = args.repeat or (1 if args.quick else 2)
    n = args.frames or (20_000 if args.quick else 100_000)
    seconds = {1000: 1.0, 10000: 0.5} if args.quick else {1000: 3.0, 10000: 2.0}
    points = [("latency", d, r, int(r * s)) for r, s in seconds.items() for d in ("down", "up")]
    points += [("throughput", d, 0, n) for d in ("down", "up")]
    # One warm-up each way first: checked in the database, not reported.
    plan = [("warmup", d, 0, 5000) for d in ("down", "up")] + points * repeat
    with h.scratch_dir("bench-proxy-", args.keep) as root:
        bench = Bench(root, h.Deadline(600.0))
        for kind, d, rate, frames in plan:
            if not args.json:
                print(f"{kind} {d} {rate or ''}", file=sys.stderr)
            for via in ("direct", "proxy"):
                bench.measure(kind, d, rate, frames, via)
        stopped = bench.recorder.stop(min(90.0, max(bench.deadline.left(), 5.0)))
        recorded = verify(bench.db, bench.runs)
    summary, headline, targets = summarize(bench.runs, recorded, stopped)
    h.finish("proxy", summary, headline, targets, args)
    for problem in recorded["problems"][:10]:
        print(f"  problem: {problem}", file=sys.stderr)
    return 0 if recorded["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(h.run(main))
