"""The proxy benchmark's summary (medians, added latency, ratios, targets) and its table.

:func:`summarize` pairs each point's direct and proxied runs (``proxy_driver.py``),
which ran back to back, and takes medians over the repeats; :func:`print_table` prints
the summary for a person.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
from typing import Any

from harness import targets_line, yes
from proxy_driver import Point
from proxy_frames import FRAME_BYTES, WARMUP_FRACTION
from report import machine, median_known, source_digest

TARGET_ADDED_P99_MS = 2.0
TARGET_ADDED_P99_RATE = 1000
TARGET_RATIO = 0.5


def cores_busy(run: dict[str, Any]) -> float:
    cpu = run["cpu_s"]
    busy: float = (cpu["peer"] + cpu["client"] + cpu["recorder"]) / run["wall_s"]
    return busy


def summarize(
    args: argparse.Namespace,
    points: list[tuple[str, Point]],
    runs: list[dict[str, Any]],
    recorder: dict[str, Any],
    recorded: dict[str, Any],
) -> dict[str, Any]:
    latency: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    for _, point in points:
        direct, proxy = pick(runs, point, "direct"), pick(runs, point, "proxy")
        if point.kind == "latency":
            latency.append(latency_row(point, direct, proxy))
        else:
            throughput.append(throughput_row(point, direct, proxy))
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine()
        | {"loadavg_start": args.loadavg_start, "loadavg_end": os.getloadavg()},
        "recorder_source": {"start": args.source_start, "end": source_digest()},
        "repeat": args.repeat,
        "quick": args.quick,
        "frame_bytes": FRAME_BYTES,
        "latency": latency,
        "throughput": throughput,
        "recorded": recorded,
        "recorder": recorder,
        "targets": targets(latency, throughput, recorder, recorded),
        "runs": runs,
    }


def pick(runs: list[dict[str, Any]], point: Point, via: str) -> list[dict[str, Any]]:
    """The runs of one point, direct or proxied, in the order they ran."""
    return [
        r
        for r in runs
        if r["kind"] == point.kind
        and r["dir"] == point.dir
        and r["rate"] == point.rate
        and r["via"] == via
    ]


def latency_row(
    point: Point, direct: list[dict[str, Any]], proxy: list[dict[str, Any]]
) -> dict[str, Any]:
    """Medians of each one's p50, p99 and max; "added" is proxied minus direct per
    repeat (they ran back to back), then the median."""
    row: dict[str, Any] = {"dir": point.dir, "rate": point.rate, "frames": point.n}
    for via, rs in (("direct", direct), ("proxy", proxy)):
        row[via] = {
            k: median_known(r["receiver"]["lat_ms"][k] for r in rs) for k in ("p50", "p99", "max")
        }
        row[via]["sent_rate"] = median_known(r["sender"]["rate"] for r in rs)
    for k in ("p50", "p99"):
        row[f"added_{k}"] = median_known(
            p["receiver"]["lat_ms"][k] - d["receiver"]["lat_ms"][k]
            for d, p in zip(direct, proxy, strict=True)
        )
    return row


def throughput_row(
    point: Point, direct: list[dict[str, Any]], proxy: list[dict[str, Any]]
) -> dict[str, Any]:
    d_fps = median_known(r["receiver"]["fps"] for r in direct)
    p_fps = median_known(r["receiver"]["fps"] for r in proxy)
    return {
        "dir": point.dir,
        "frames": point.n,
        "direct_fps": d_fps,
        "proxy_fps": p_fps,
        "ratio": p_fps / d_fps,
        "ratios": [
            p["receiver"]["fps"] / d["receiver"]["fps"] for d, p in zip(direct, proxy, strict=True)
        ],
        "recorded_fps": median_known(r.get("recorded_fps", math.nan) for r in proxy),
        "commit_lag_ms": median_known(r.get("commit_lag_ms", math.nan) for r in proxy),
        "cpu_s_proxied": {
            k: median_known(r["cpu_s"][k] for r in proxy)
            for k in ("peer", "client", "recorder", "recorder_main")
        },
        # CPU-seconds of peer, client and recorder per wall-second: how many of the
        # machine's cores the measurement kept busy.
        "cores_busy_proxied": median_known(cores_busy(r) for r in proxy),
        "cores_busy_direct": median_known(cores_busy(r) for r in direct),
        "cpu_s_direct": {
            k: median_known(r["cpu_s"][k] for r in direct) for k in ("peer", "client", "recorder")
        },
    }


def targets(
    latency: list[dict[str, Any]],
    throughput: list[dict[str, Any]],
    recorder: dict[str, Any],
    recorded: dict[str, Any],
) -> dict[str, bool]:
    at_target = [r for r in latency if r["rate"] == TARGET_ADDED_P99_RATE]
    return {
        "added_p99_lt_2ms_at_1000": bool(at_target)
        and all(r["added_p99"] < TARGET_ADDED_P99_MS for r in at_target),
        "throughput_ratio_ge_0.5": bool(throughput)
        and all(t["ratio"] >= TARGET_RATIO for t in throughput),
        "every_frame_recorded": recorded["ok"],
        "clean_stop": recorder["exit_code"] == 0 and recorder["logged_stopped"],
    }


def print_table(s: dict[str, Any]) -> None:
    print(
        f"proxy benchmark: {s['repeat']} repeat(s), medians; one-way latency in ms, "
        f"first {WARMUP_FRACTION:.0%} of each run dropped"
    )
    print(
        f"  {'rate':>7} {'dir':<5} {'direct p50':>10} {'p99':>6} {'max':>6}"
        f"  {'proxied p50':>11} {'p99':>6} {'max':>6}  {'added p50':>9} {'p99':>6}"
    )
    for r in s["latency"]:
        d, p = r["direct"], r["proxy"]
        print(
            f"  {r['rate']:>5}/s {r['dir']:<5} {d['p50']:>10.3f} {d['p99']:>6.3f} {d['max']:>6.2f}"
            f"  {p['p50']:>11.3f} {p['p99']:>6.3f} {p['max']:>6.2f}"
            f"  {r['added_p50']:>+9.3f} {r['added_p99']:>+6.3f}"
        )
    print(
        f"  {'throughput':<13} {'direct f/s':>10} {'proxied f/s':>11} {'ratio':>6}"
        f"  {'recorded f/s':>12}  cores busy direct/proxied"
        f"  cpu-s proxied: peer/client/recorder (its main process)"
    )
    for t in s["throughput"]:
        c = t["cpu_s_proxied"]
        print(
            f"  {t['dir']:<5} {t['frames']:>7,} {t['direct_fps']:>10,.0f} {t['proxy_fps']:>11,.0f}"
            f" {t['ratio']:>6.3f}  {t['recorded_fps']:>12,.0f}"
            f"  {t['cores_busy_direct']:>11.2f}/{t['cores_busy_proxied']:.2f}"
            f"  {c['peer']:.1f}/{c['client']:.1f}/{c['recorder']:.1f} ({c['recorder_main']:.1f})"
        )
    rec = s["recorded"]
    print(
        f"  every frame recorded: {yes(rec['ok'])} ({rec['proxied_runs']} proxied connections,"
        f" {rec['frames_checked']:,} frames, byte-identical)"
    )
    for problem in rec["problems"][:10]:
        print(f"    problem: {problem}")
    m = s["machine"]
    load = "/".join(f"{x:.2f}" for x in m["loadavg_start"])
    print(f"  machine: {m['nproc']} CPUs, Python {m['python']}, load average at start {load}")
    src = s["recorder_source"]
    changed = "" if src["start"] == src["end"] else f" -> {src['end']} (CHANGED DURING THE RUN)"
    print(f"  recorder source sha256 {src['start']}{changed}")
    r = s["recorder"]
    print(f"  recorder exit {r['exit_code']}, logged stopped: {yes(r['logged_stopped'])}")
    for w in r["warnings"][:5]:
        print(f"    log: {w}")
    print(targets_line(s["targets"]))
