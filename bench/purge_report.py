"""The purge benchmark's report (``bench/purge.py``): the medians of its runs, and
the table it prints.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from harness import targets_line, yes
from ingest import print_run_problems
from samples import median, rate

if TYPE_CHECKING:
    from cleanup_runs import Built
    from purge import Measurement

TARGET_RATIO = 0.5


def summarize(built: Built, runs: list[Measurement]) -> dict[str, Any]:
    baselines = [r for r in runs if r.kind == "baseline"]
    purges = [r for r in runs if r.kind == "purge"]
    normal = median([r.steady_fps for r in baselines])
    during = median([r.during_purge_fps for r in purges])
    ratio = during / normal
    zero_loss = all(r.loss.ok for r in runs)
    purged = all(r.purge is not None and r.purge.ok for r in purges)
    clean_stop = all(r.exit_code == 0 and r.logged_stopped for r in runs)
    return {
        "purge_frames": built.session_frames,
        "frames": runs[0].frames,
        "repeat": len(purges),
        "build_s": built.seconds,
        "auto_vacuum": built.auto_vacuum,
        "normal_fps": normal,
        "during_purge_fps": during,
        "ratio": ratio,
        "during_delete_fps": median([r.during_delete_fps for r in purges]),
        "during_rest_fps": median([r.during_rest_fps for r in purges]),
        "overlap_s": median([r.overlap_s for r in purges]),
        "covered": median([r.covered for r in purges]),
        "purge_s": median([r.purge_s for r in purges]),
        "delete_s": median([r.delete_s for r in purges]),
        "command_s": median([r.command_s for r in purges]),
        "purge_fps": median([r.purge_fps for r in purges]),
        "delete_fps": median([r.delete_fps for r in purges]),
        "purge_steady_fps": median([r.steady_fps for r in purges]),
        "zero_loss": zero_loss,
        "purge_complete": purged,
        "clean_stop": clean_stop,
        "targets": {
            "ratio_ge_0.5": ratio >= TARGET_RATIO,
            "zero_loss": zero_loss,
            "purge_complete": purged,
            "clean_stop": clean_stop,
        },
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "runs": [asdict(r) for r in runs],
    }


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def sizes(b: dict[str, int]) -> str:
    return f"{mb(b['main'])} (+ WAL {mb(b['wal'])})" if b else "-"


def print_table(s: dict[str, Any]) -> None:
    rows = [
        ("frames purged (one finished session)", f"{s['purge_frames']:,}"),
        ("firehose frames per run", f"{s['frames']:,}"),
        ("database built in", f"{s['build_s']:.1f} s, PRAGMA auto_vacuum = {s['auto_vacuum']}"),
        ("ingest frames/s, normal (10-90%)", f"{rate(s['normal_fps'])}"),
        ("ingest frames/s, during the purge", f"{rate(s['during_purge_fps'])}"),
        ("ratio during/normal", f"{s['ratio']:.2f}  (target >= {TARGET_RATIO})"),
        ("ingest frames/s, during the deletes", f"{rate(s['during_delete_fps'])}"),
        ("ingest frames/s, after them (vacuum)", f"{rate(s['during_rest_fps'])}"),
        ("purge measured under ingest", f"{s['overlap_s']:.1f} s, {s['covered']:.0%} of it"),
        ("purge s (audit row)", f"{s['purge_s']:.1f}, of which deletes {s['delete_s']:.1f}"),
        ("purge frames/s", f"{rate(s['purge_fps'])}, deletes alone {rate(s['delete_fps'])}"),
        ("cleanup command s", f"{s['command_s']:.1f}"),
        ("zero loss", yes(s["zero_loss"])),
        ("purged session gone", yes(s["purge_complete"])),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"purge benchmark ({s['repeat']} run(s) each, medians)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("  runs:")
    for r in s["runs"]:
        print_run(r)
    if s["covered"] < 0.99:
        print(
            f"  note: the firehose's steady part covered {s['covered']:.0%} of the purge"
            " (more --frames cover more)"
        )
    print(targets_line(s["targets"]))


def print_run(r: dict[str, Any]) -> None:
    print(
        f"    {r['kind']:<8}  steady {rate(r['steady_fps']):>7} f/s"
        f"  longest commit gap {r['longest_stall_s']:.2f} s"
        f"  recorder cpu {r['recorder_cpu_s']:.1f} s  exit {r['exit_code']}"
        f"  loss-check {'ok' if r['loss']['ok'] else 'FAILED'}"
    )
    if r["kind"] == "purge":
        print_purge_run(r)
    else:
        print(
            f"      file: before {sizes(r['bytes_before'])},"
            f" after stop {sizes(r['bytes_after_stop'])}"
        )
    print_run_problems(r)
    if r["other_log_lines"]:
        print(f"      log: {r['other_log_lines']} lines not JSON, first: {r['first_other_line']}")


def print_purge_run(r: dict[str, Any]) -> None:
    print(
        f"      during the purge {rate(r['during_purge_fps'])} f/s over"
        f" {r['overlap_s']:.1f} s ({r['covered']:.0%} of the purge),"
        f" during the deletes {rate(r['during_delete_fps'])} f/s"
        f" ({r['deletes_covered']:.0%} of them), after them {rate(r['during_rest_fps'])} f/s"
    )
    print(
        f"      purge {r['purge_s']:.1f} s ({rate(r['purge_fps'])} f/s), deletes"
        f" {r['delete_s']:.1f} s ({rate(r['delete_fps'])} f/s), command {r['command_s']:.1f} s,"
        f" purge-check {'ok' if r['purge']['ok'] else 'FAILED'}"
    )
    marks = ", ".join(f"{k} {v:.1f}" for k, v in r["timeline"].items())
    print(f"      s after the first firehose row: {marks}")
    print(
        f"      file: before {sizes(r['bytes_before'])},"
        f" right after {sizes(r['bytes_right_after'])}"
        f" ({mb(r['logical_bytes_right_after'])} in pages,"
        f" {r['free_pages_right_after']} free), after stop {sizes(r['bytes_after_stop'])}"
    )
    for problem in r["purge"]["problems"][:10]:
        print(f"      purge: {problem}")
