"""Ingest benchmark: frames/s the recorder commits from a firehose, against a bare
``websockets`` client reading the same firehose in the same run; zero loss; peak RSS.

Each measurement has a fresh simulator (``recorder simulate --firehose N``) and a fresh
database: a SQLite file, or with ``--database postgresql://...`` a new database there.
Ceiling and recorder alternate ``--repeat`` times; medians. ``--recorders 2``
(PostgreSQL): two recorders, each with its own firehose, into one database at once.
Method and numbers: docs/BENCHMARKS.md. Exits 1 if a frame was lost or altered, 2 if
the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import firehose as fh
import harness as h
import recording as rc
from databases import Database, database_factory

TARGET_RATIO = 0.5
TARGET_RSS_MB = 150.0
TARGET_RSS_FRAMES = 1_000_000


def measure(
    args: argparse.Namespace, deadline: h.Deadline, make_db: Any, root: Path
) -> list[dict[str, Any]]:
    """One measurement: ``--recorders`` recorders, each committing its own firehose into
    one fresh database at once, and their rows checked; one result per recorder."""
    db: Database = make_db(workdir := Path(tempfile.mkdtemp(prefix="recorder-", dir=root)))
    names = ("default",) if args.recorders == 1 else ("bench-a", "bench-b")
    try:
        runs = rc.record_firehose(db, workdir, args.frames, deadline, names)
        for r in runs:
            r["loss"] = asdict(fh.verify_firehose(db, r["instance"], args.frames))
        return runs
    finally:
        db.close()


def summarize(
    args: argparse.Namespace, ceilings: list[dict[str, float]], runs: list[list[dict[str, Any]]]
) -> tuple[dict[str, Any], dict[str, str], dict[str, bool]]:
    """The summary ``--json`` prints, the headline figures and the targets."""
    recs = [r for m in runs for r in m]
    ceiling = h.median(c["fps"] for c in ceilings)
    fps = h.median(r["fps"] for r in recs)
    peak = max(r["peak_rss_mb"] for r in recs)
    zero_loss = all(r["loss"]["ok"] for r in recs)
    where = "PostgreSQL" if args.database else "SQLite"
    headline = {
        "frames": f"{args.frames:,} into {where}, {args.repeat} run(s) of each kind, medians",
        "recorder/ceiling": f"{fps / ceiling:.2f} ({fps:,.0f} / {ceiling:,.0f} frames/s)",
        "zero loss": h.yes(zero_loss),
        "peak RSS": f"{peak:.1f} MB",
    }
    summary = {"frames": args.frames, "database": where, "ratio": fps / ceiling}
    summary |= {"zero_loss": zero_loss, "ceiling_runs": ceilings, "recorder_runs": recs}
    if args.recorders > 1:
        # All the recorders' frames / (the last stream_end seen - the first chunk received).
        spans = [max(r["done"] for r in m) - min(r["first"] for r in m) for m in runs]
        combined = h.median(
            len(m) * args.frames / span for m, span in zip(runs, spans, strict=True)
        )
        headline["recorder/ceiling"] = f"{fps / ceiling:.2f} each ({fps:,.0f} / {ceiling:,.0f})"
        headline["combined"] = f"{combined:,.0f} frames/s ({combined / ceiling:.2f})"
        summary["combined_fps"] = combined
    targets = {"zero_loss": zero_loss}
    targets["clean_stop"] = all(r["exit_code"] == 0 and r["logged_stopped"] for r in recs)
    if args.recorders == 1:
        targets["ratio_ge_0.5"] = fps / ceiling >= TARGET_RATIO
    if args.frames >= TARGET_RSS_FRAMES:
        targets["peak_rss_lt_150mb"] = peak < TARGET_RSS_MB
    return summary, headline, targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--frames", type=int, default=200_000, help="firehose frames per run")
    p.add_argument("--repeat", type=int, default=2, help="measurements of each kind (median)")
    p.add_argument("--database", metavar="URL", help="a PostgreSQL server; default: SQLite")
    p.add_argument("--recorders", type=int, choices=(1, 2), default=1, help="2: PostgreSQL")
    h.common_options(p)
    args = p.parse_args(argv)
    if args.frames < 1 or args.repeat < 1:
        p.error("--frames and --repeat must be at least 1")
    if args.database and not args.database.startswith(("postgresql", "postgres:")):
        p.error("--database takes a PostgreSQL URL (postgresql://...); SQLite is the default")
    if args.recorders > 1 and not args.database:
        p.error("--recorders 2 needs --database postgresql://... (one SQLite file has one writer)")
    # Generous: 20 s of start-up per measurement, and at least 2 000 frames/s.
    deadline = h.Deadline(2 * args.repeat * (20 + args.frames * args.recorders / 2000))
    make_db = database_factory(args.database, args.keep)
    with h.scratch_dir("bench-ingest-", args.keep) as root:
        kinds: dict[str, Callable[[Path], Any]] = {
            "ceiling": partial(fh.run_ceiling, args.frames, deadline=deadline),
            "recorder": partial(measure, args, deadline, make_db),
        }
        runs = h.alternate(args.repeat, root, kinds, args.json)
    summary, headline, targets = summarize(args, runs["ceiling"], runs["recorder"])
    h.finish("ingest", summary, headline, targets, args)
    if not args.json:
        for r in summary["recorder_runs"]:
            fh.print_run_problems(r)
    return 0 if summary["zero_loss"] else 1


if __name__ == "__main__":
    raise SystemExit(h.run(main))
