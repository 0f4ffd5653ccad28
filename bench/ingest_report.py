"""The ingest benchmark's summary (medians, ratios, targets) and its printed table.

:func:`summarize` turns the ceiling runs (``bench/firehose.py``) and the recorder
measurements (``bench/ingest_run.py``) into the summary ``--json`` prints;
:func:`print_table` prints it for a person, one recorder or several.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from firehose import CeilingRun
from harness import targets_line, yes
from ingest_run import Measurement, RecorderRun
from report import machine, median, print_rows

TARGET_RATIO = 0.5
TARGET_RSS_MB = 150.0
TARGET_RSS_FRAMES = 1_000_000


def summarize(
    frames: int, ceilings: list[CeilingRun], measurements: list[Measurement]
) -> dict[str, Any]:
    recorders = [r for m in measurements for r in m.runs]
    count = len(measurements[0].runs)
    ceiling = median([c.fps for c in ceilings])
    recorder = median([r.fps for r in recorders])
    peak = max(r.peak_rss_mb for r in recorders)
    zero_loss = all(r.loss.ok for r in recorders)
    ratio = recorder / ceiling
    summary: dict[str, Any] = {
        "frames": frames,
        "repeat": len(measurements),
        "ceiling_fps": ceiling,
        "recorder_fps": recorder,
        "ratio": ratio,
        "zero_loss": zero_loss,
        "recorder_peak_rss_mb": peak,
        "avg_frame_bytes": median([c.avg_frame_bytes for c in ceilings]),
        "recorder_receive_fps": median([r.receive_fps for r in recorders]),
        "recorder_steady_fps": median([r.steady_fps for r in recorders]),
        "recorder_commit_lag_s": median([r.commit_lag_s for r in recorders]),
        "targets": targets(frames, count, ratio, peak, recorders),
        "machine": machine(),
        "database": measurements[0].database,
        "recorders": count,
    }
    if count > 1:
        summary |= several(ceiling, measurements)
    summary["ceiling_runs"] = [asdict(c) for c in ceilings]
    summary["recorder_runs"] = [asdict(r) for r in recorders]
    summary["measurements"] = [
        {k: v for k, v in asdict(m).items() if k != "runs"} for m in measurements
    ]
    return summary


def targets(
    frames: int, count: int, ratio: float, peak: float, recorders: list[RecorderRun]
) -> dict[str, Any]:
    """The targets this run can check: the ratio with one recorder, peak RSS over
    enough frames."""
    met: dict[str, Any] = {}
    if count == 1:
        met["ratio_ge_0.5"] = ratio >= TARGET_RATIO
    met["zero_loss"] = all(r.loss.ok for r in recorders)
    met["clean_stop"] = all(r.exit_code == 0 and r.logged_stopped for r in recorders)
    if frames >= TARGET_RSS_FRAMES:
        met["peak_rss_lt_150mb"] = peak < TARGET_RSS_MB
    return met


def several(ceiling: float, measurements: list[Measurement]) -> dict[str, Any]:
    """With several recorders: each one's medians, and what they did together."""
    recorders = [r for m in measurements for r in m.runs]
    combined = median([m.combined_fps for m in measurements])
    return {
        "per_recorder": {
            name: {
                "fps": median([r.fps for r in runs]),
                "ratio": median([r.fps for r in runs]) / ceiling,
                "steady_fps": median([r.steady_fps for r in runs]),
                "receive_fps": median([r.receive_fps for r in runs]),
                "zero_loss": all(r.loss.ok for r in runs),
            }
            for name in [r.instance for r in measurements[0].runs]
            for runs in [[r for r in recorders if r.instance == name]]
        },
        "combined_fps": combined,
        "combined_ratio": combined / ceiling,
        "overlap_fps": median([m.overlap_fps for m in measurements]),
        "start_spread_s": median([m.start_spread_s for m in measurements]),
    }


def print_table(s: dict[str, Any]) -> None:
    if s["recorders"] > 1:
        print_multi_table(s)
        return
    rows = [
        ("frames", f"{s['frames']:,}"),
        ("avg frame bytes", f"{s['avg_frame_bytes']:.1f}"),
        ("ceiling frames/s (bare client)", f"{s['ceiling_fps']:,.0f}"),
        ("recorder frames/s (committed)", f"{s['recorder_fps']:,.0f}"),
        ("ratio recorder/ceiling", f"{s['ratio']:.2f}  (target >= {TARGET_RATIO})"),
        ("zero loss", yes(s["zero_loss"])),
        ("recorder peak RSS MB", f"{s['recorder_peak_rss_mb']:.1f}  (target < {TARGET_RSS_MB:g})"),
        ("recorder frames/s (received)", f"{s['recorder_receive_fps']:,.0f}"),
        ("recorder frames/s (10-90% steady)", f"{s['recorder_steady_fps']:,.0f}"),
        ("commit lag after last frame s", f"{s['recorder_commit_lag_s']:.2f}"),
    ]
    into = " into PostgreSQL" if s["database"] == "postgresql" else ""
    print(f"ingest benchmark{into} ({s['repeat']} run(s) each, medians)")
    print_rows(rows)
    print("  runs:")
    print_ceiling_runs(s)
    for r, m in zip(s["recorder_runs"], s["measurements"], strict=True):
        print_recorder_run("recorder ", r, m["database_cpu_s"])
    print(targets_line(s["targets"]))


def print_multi_table(s: dict[str, Any]) -> None:
    per = s["per_recorder"]
    rows = [
        ("frames per recorder", f"{s['frames']:,}"),
        ("avg frame bytes", f"{s['avg_frame_bytes']:.1f}"),
        ("ceiling frames/s (bare client)", f"{s['ceiling_fps']:,.0f}"),
    ]
    for name, p in per.items():
        rows.append((f"{name} frames/s (committed)", f"{p['fps']:,.0f}  (ratio {p['ratio']:.2f})"))
    rows += [
        (
            "combined frames/s (committed)",
            f"{s['combined_fps']:,.0f}  (ratio {s['combined_ratio']:.2f})",
        ),
        ("combined while all committed", f"{s['overlap_fps']:,.0f}"),
        ("first chunks apart s", f"{s['start_spread_s']:.2f}"),
        ("zero loss (every recorder)", yes(s["zero_loss"])),
        ("recorder peak RSS MB (highest)", f"{s['recorder_peak_rss_mb']:.1f}"),
    ]
    for name, p in per.items():
        rows.append((f"{name} frames/s (10-90% steady)", f"{p['steady_fps']:,.0f}"))
    print(
        f"ingest benchmark, {s['recorders']} recorders into one PostgreSQL database"
        f" ({s['repeat']} run(s) each, medians)"
    )
    print_rows(rows)
    print("  runs:")
    print_ceiling_runs(s)
    n = s["recorders"]
    for i, m in enumerate(s["measurements"]):
        for r in s["recorder_runs"][i * n : (i + 1) * n]:
            print_recorder_run(f"{r['instance']:<9}", r, float("nan"))
        print(
            f"    combined  {m['combined_fps']:>9,.0f} f/s  while all committed"
            f" {m['overlap_fps']:,.0f} f/s  postgres cpu {m['database_cpu_s']:.1f} s"
        )
    print(targets_line(s["targets"]))


def print_ceiling_runs(s: dict[str, Any]) -> None:
    for c in s["ceiling_runs"]:
        print(
            f"    ceiling   {c['fps']:>9,.0f} f/s  {c['seconds']:6.2f} s"
            f"  cpu client {c['client_cpu_s']:.1f} s, simulator {c['simulator_cpu_s']:.1f} s"
        )


def print_recorder_run(label: str, r: dict[str, Any], database_cpu_s: float) -> None:
    server = "" if database_cpu_s != database_cpu_s else f", postgres {database_cpu_s:.1f} s"
    print(
        f"    {label} {r['fps']:>9,.0f} f/s  {r['seconds']:6.2f} s"
        f"  cpu recorder {r['recorder_cpu_s']:.1f} s, simulator {r['simulator_cpu_s']:.1f} s"
        f"{server}  rss {r['peak_rss_mb']:.0f} MB  exit {r['exit_code']}"
        f"  loss-check {'ok' if r['loss']['ok'] else 'FAILED'}"
    )
    print_run_problems(r)


def print_run_problems(r: dict[str, Any]) -> None:
    """Under a run's line: what its loss check found and what the recorder logged."""
    for problem in r["loss"]["problems"][:10]:
        print(f"      loss: {problem}")
    for warning in r["warnings"][:5]:
        print(f"      log: {warning}")
