"""Alerts benchmark: does delivering alerts slow recording, with a target that hangs?

In one run, alternating: a bare client reading the simulator's firehose (the ingest
ceiling, as in bench/ingest.py); the recorder committing the firehose with no
[alerts]; with rules that fire hundreds of times a second on it, delivered to a
webhook on 127.0.0.1 that takes each POST and never answers; and with one that
answers at once. Each recorder's ingest ratio (its committed frames/s / the
ceiling), the alerts stored, the deliveries made and pending; and the classifier's
frames/s with and without the rules, timed in this process. Method, numbers and
targets: docs/BENCHMARKS.md, "Alerts during ingest". Exits 1 if a frame was lost or
altered or an alert missing, 2 if the benchmark itself failed.

    python bench/alerts.py                      # 500 000 frames, 2 runs of each kind
    python bench/alerts.py --every 0.002 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import alert_parts as ap
import firehose as fh
import harness as h
import recording as rc
from databases import Database, database_factory
from recording import LINK_SQL, process_tree

TARGET_RATIO = 0.5
# "Within a few percent" of the same recorder without alerts, in the same run.
TARGET_OF_PLAIN = 0.95
KINDS = {"no alerts": None, "hung target": True, "answering target": False}

# Read at stream_end and again after the stop; the same SQL on both databases.
COUNTS = {
    "alerts": "select count(*) from alerts",
    "pending": "select count(*) from alert_targets where done = 0",
    "attempts": "select count(*) from alert_deliveries",
    "delivered": "select count(*) from alert_deliveries where ok = 1",
}
PROCESSES = ("classifier", "database")
CHUNKS_SQL = "select received_at_us from frames where type = 'stream_chunk' order by id"


def counts(db: Database) -> dict[str, int]:
    return {name: int(db.scalar(sql) or 0) for name, sql in COUNTS.items()}


def expected_alerts(db: Database, every: float) -> int:
    """How many alerts the chunk rule should have raised: its ``repeat`` gate
    (``recorder.alerts.occurrence.Gate``) run over the receive times stored."""
    window, last, raised = max(int(every * 1e6), 1), None, 0
    for (at,) in db.rows(CHUNKS_SQL):
        if last is None or at - last >= window:
            last, raised = at, raised + 1
    return raised


class CpuSplit:
    """CPU-seconds of each of the recorder's processes (the service: the link, the
    deliverer and its sending threads; the classifier; the database) from when its
    link connection is stored."""

    def __init__(self, db: Database) -> None:
        self.db, self.start, self.pid = db, dict[str, float](), 0

    def poll(self) -> None:
        if not self.start and self.pid and self.db.scalar(LINK_SQL, "default") is not None:
            self.start = self.now()

    def now(self) -> dict[str, float]:
        import psutil

        out: dict[str, float] = {}
        for pid in process_tree(self.pid):
            try:
                cmdline = " ".join(psutil.Process(pid).cmdline())
            except psutil.NoSuchProcess:
                continue
            name = next((n for n in PROCESSES if f"{n}_entry" in cmdline), "service")
            out[name] = out.get(name, 0.0) + h.cpu_seconds(pid, children=False)
        return out

    def spent(self) -> dict[str, float]:
        end = self.now()
        return {k: round(end[k] - self.start.get(k, float("nan")), 2) for k in end}


def measure(
    args: argparse.Namespace, deadline: h.Deadline, make_db: Any, hang: bool | None, root: Path
) -> dict[str, Any]:
    """One recorder run: the firehose committed with no alerts (``hang`` None), or with
    the rules delivering to a webhook that hangs or answers."""
    db: Database = make_db(workdir := Path(tempfile.mkdtemp(prefix="alerts-", dir=root)))
    hook = ap.Hook(hang) if hang is not None else None
    config = ap.alerts_config(hook.url, args.every) if hook is not None else ""
    out: dict[str, Any] = {}
    cpu = CpuSplit(db)

    def each_poll() -> None:
        if not cpu.pid and h.Child.live:
            cpu.pid = next(c.pid for c in h.Child.live if c.name == "recorder")
        cpu.poll()

    def committed(runs: list[dict[str, Any]]) -> None:
        out["cpu_s"] = cpu.spent()
        out["at_end"] = counts(db) | {"posts": hook.posts if hook else 0}
        out["stopping"] = time.monotonic()

    try:
        run = rc.record_firehose(
            db, workdir, args.frames, deadline, ("default",), each_poll, committed, config
        )[0]
        run["stop_s"] = time.monotonic() - out.pop("stopping")
        run |= out | {"after_stop": counts(db) | {"posts": hook.posts if hook else 0}}
        run["loss"] = asdict(fh.verify_firehose(db, "default", args.frames))
        run["alerts_expected"] = expected_alerts(db, args.every) if hook is not None else 0
        return run
    finally:
        if hook is not None:
            hook.close()
        db.close()


def summarize(
    args: argparse.Namespace, runs: dict[str, list[Any]], classifier: dict[str, float]
) -> tuple[dict[str, Any], dict[str, str], dict[str, bool]]:
    """The summary ``--json`` prints, the headline figures and the targets."""
    ceiling = h.median(c["fps"] for c in runs["ceiling"])
    fps = {kind: h.median(r["fps"] for r in runs[kind]) for kind in KINDS}
    ratio = {kind: fps[kind] / ceiling for kind in KINDS}
    plain = ratio["no alerts"]
    where = "PostgreSQL" if args.database else "SQLite"
    headline = {
        "frames": f"{args.frames:,} into {where}, {args.repeat} run(s) of each kind, medians",
        "ceiling": f"{ceiling:,.0f} frames/s (bare client)",
    }
    for kind in KINDS:
        of_plain = "" if kind == "no alerts" else f", {ratio[kind] / plain:.2f} of no alerts"
        headline[kind] = f"ratio {ratio[kind]:.2f} ({fps[kind]:,.0f} frames/s{of_plain})"
    cpu = {kind: _cpu_us(args.frames, runs[kind]) for kind in KINDS}
    headline["CPU µs/frame"] = "; ".join(
        f"{kind}: " + ", ".join(f"{p} {us:.2f}" for p, us in cpu[kind].items()) for kind in KINDS
    )
    for kind in ("hung target", "answering target"):
        headline[f"  {kind.split()[0]}: alerts"] = "; ".join(_alerts_line(r) for r in runs[kind])
    none, rules = classifier["none fps"], classifier["bench rules fps"]
    headline["classifier"] = (
        f"{rules:,.0f} frames/s with the rules, {none:,.0f} without"
        f" (+{(1 / rules - 1 / none) * 1e6:.2f} µs/frame);"
        f" {classifier['status rule fps']:,.0f} with the status rule alone"
    )
    recs = [r for kind in KINDS for r in runs[kind]]
    zero_loss = all(r["loss"]["ok"] for r in recs)
    all_alerts = all(
        r["at_end"]["alerts"] == r["alerts_expected"] > 0
        for kind in ("hung target", "answering target")
        for r in runs[kind]
    )
    headline["zero loss, every alert"] = f"{h.yes(zero_loss)}, {h.yes(all_alerts)}"
    summary = {"frames": args.frames, "database": where, "every_s": args.every}
    summary |= {"ceiling_fps": ceiling, "fps": fps, "ratio": ratio, "cpu_us_per_frame": cpu}
    summary["classifier"] = classifier
    summary |= {"zero_loss": zero_loss, "every_alert": all_alerts, "runs": runs}
    targets = {"zero_loss": zero_loss, "every_alert_stored": all_alerts}
    targets["clean_stop"] = all(r["exit_code"] == 0 and r["logged_stopped"] for r in recs)
    for kind in ("hung target", "answering target"):
        name = kind.split()[0]
        targets[f"{name}_ratio_ge_{TARGET_RATIO}"] = ratio[kind] >= TARGET_RATIO
        targets[f"{name}_ge_{TARGET_OF_PLAIN}_of_plain"] = ratio[kind] >= TARGET_OF_PLAIN * plain
    return summary, headline, targets


def _cpu_us(frames: int, runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median CPU-µs per frame of each of the recorder's processes: a figure that moves
    less than frames/s when other jobs share the machine."""
    return {
        p: h.median(r["cpu_s"].get(p) for r in runs) / frames * 1e6 for p in ("service", *PROCESSES)
    }


def _alerts_line(r: dict[str, Any]) -> str:
    end, after = r["at_end"], r["after_stop"]
    return (
        f"{end['alerts']} stored ({r['alerts_expected']} due), {end['delivered']} delivered"
        f" by stream_end and {after['delivered']} by the stop ({after['attempts']} attempts,"
        f" {after['pending']} pending), stop {r['stop_s']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--frames", type=int, default=500_000, help="firehose frames per run")
    p.add_argument("--repeat", type=int, default=2, help="measurements of each kind (median)")
    p.add_argument(
        "--every", type=float, default=0.005, help="the chunk rule's repeat, seconds (0.005)"
    )
    p.add_argument("--database", metavar="URL", help="a PostgreSQL server; default: SQLite")
    h.common_options(p)
    args = p.parse_args(argv)
    if args.frames < 1 or args.repeat < 1 or not args.every > 0:
        p.error("--frames and --repeat must be at least 1, --every above 0")
    if args.database and not args.database.startswith(("postgresql", "postgres:")):
        p.error("--database takes a PostgreSQL URL (postgresql://...); SQLite is the default")
    # Generous: 40 s of start-up and stop per measurement, and at least 2 000 frames/s.
    deadline = h.Deadline(4 * args.repeat * (40 + args.frames / 2000))
    make_db = database_factory(args.database, args.keep)
    with h.scratch_dir("bench-alerts-", args.keep) as root:
        kinds: dict[str, Callable[[Path], Any]] = {
            "ceiling": partial(fh.run_ceiling, args.frames, deadline=deadline)
        }
        for kind, hang in KINDS.items():
            kinds[kind] = partial(measure, args, deadline, make_db, hang)
        runs = h.alternate(args.repeat, root, kinds, args.json)
    classifier = ap.classifier_rates(min(args.frames, 200_000), args.every)
    summary, headline, targets = summarize(args, runs, classifier)
    h.finish("alerts", summary, headline, targets, args)
    if not args.json:
        for kind in KINDS:
            for r in runs[kind]:
                fh.print_run_problems(r)
    return 0 if summary["zero_loss"] and summary["every_alert"] else 1


if __name__ == "__main__":
    raise SystemExit(h.run(main))
