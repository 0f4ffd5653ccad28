"""Query benchmark: how fast do the query commands answer on a big database?

Measures each command of ``query_commands.COMMANDS`` as a process of its own, start-up
included, warm (median of ``--repeat``) and cold (page cache emptied); against a bare
``python -c`` script running the same SQL with stdlib ``sqlite3``, timed the same way
in the same run, alternating with the command. The database is built by
``recorder.simulator.database.build`` and kept under ``--workdir``. Method, numbers,
targets: docs/BENCHMARKS.md, "Query".

    python bench/query.py                      # 1 000 000 and 5 000 000 frames
    python bench/query.py --frames 100000 --repeat 3 --json

Exits 1 if a command failed or printed the wrong thing, 2 if the benchmark failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import harness as h
from query_commands import COMMANDS, TARGET_SCOPED_S, Command, baseline_code, expectations

FRAMES_PER_SESSION = 500
DAYS_PER_10K_SESSIONS = 30  # 6 days for 1 000 000 frames, 30 for 5 000 000
SESSION_MINUTES = 30.0  # about 7 sessions at once: their frames interleave
TASKS = 27  # execute_task requests in each session
# What decides the rows a recording holds: a database built by other code is built
# again. The query side, which is measured, is left out.
WRITER_SOURCES = tuple(f"recorder/{m}/" for m in ("db", "pipeline", "protocol", "simulator"))
WRITER_SOURCES += ("alembic/", "recorder/times.py")
QUERY_SIDE = tuple(f"recorder/db/{m}.py" for m in ("follow", "pages", "readonly", "rows"))
QUERY_SIDE += ("recorder/db/recordings.py",)
BUILD_VERSION = 2  # bump when the database built changes


def database(frames: int, args: argparse.Namespace) -> Path:
    """The database of ``frames`` frames under ``--workdir``: built unless it is there,
    built from the same parameters and code (``--rebuild``: built again)."""
    from recorder.simulator.database import build, spread

    sessions = max(frames // FRAMES_PER_SESSION, 1)
    days = -(-sessions * DAYS_PER_10K_SESSIONS // 10_000)
    code = hashlib.sha256(f"{BUILD_VERSION} {frames} {sessions} {days}".encode())
    for path in sorted(p for top in ("recorder", "alembic") for p in (h.REPO / top).rglob("*.py")):
        rel = path.relative_to(h.REPO).as_posix()
        if rel.startswith(WRITER_SOURCES) and not rel.startswith(QUERY_SIDE):
            code.update(rel.encode() + b"\0" + path.read_bytes())
    workdir: Path = args.workdir
    db, stamp = workdir / f"query-{frames}.db", workdir / f"query-{frames}.digest"
    if (
        not args.rebuild
        and db.exists()
        and stamp.exists()
        and stamp.read_text() == code.hexdigest()
    ):
        return db
    print(f"building {db} ...", file=sys.stderr, flush=True)
    tmp = db.with_name(db.name + ".building")
    for p in (db, stamp, tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    try:
        built = build(tmp, spread(frames, sessions, days, SESSION_MINUTES, tasks=TASKS))
    except ValueError as exc:  # the sizes do not fit: say which
        raise h.BenchError(f"cannot build {frames:,} frames: {exc}") from None
    if built.frames != frames or len(built.sessions) != sessions:
        raise h.BenchError(f"built {built.frames} frames and {len(built.sessions)} sessions")
    os.replace(tmp, db)
    stamp.write_text(code.hexdigest())
    return db


def run(args: list[str], env: dict[str, str]) -> tuple[float, list[str]]:
    """Start, read stdout to the end, wait: the wall time, and the lines printed."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            args, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        raise h.BenchError(f"{' '.join(args[:3])} ... took over 300 s") from None
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise CommandFailed(f"exited {proc.returncode}: {proc.stderr.decode()[-300:]}")
    return seconds, proc.stdout.decode(errors="replace").splitlines()


class CommandFailed(Exception):
    """A command (or its baseline) exited non-zero or printed the wrong thing."""


@dataclass
class Result:
    command: str
    target_s: float | None
    ours_warm_s: float = float("nan")  # medians of --repeat
    base_warm_s: float = float("nan")
    ours_cold_s: float = float("nan")
    base_cold_s: float = float("nan")
    cold: list[tuple[str, float]] = field(default_factory=list)  # how, and what stayed cached
    problems: list[str] = field(default_factory=list)


class Measurer:
    """Runs a command and its baseline: a warm-up each (their bytecode is written), a
    cold run each, then ``repeat`` warm runs alternating; every run's output checked."""

    def __init__(self, db: Path, args: argparse.Namespace) -> None:
        self.db, self.repeat = db, args.repeat
        self.e = expectations(db)
        script = Path(sys.executable).parent / "recorder"
        self.prefix = [str(script)] if script.exists() else [sys.executable, "-m", "recorder"]
        # As installed: bytecode (kept under the work directory), output not unbuffered.
        drop = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
        self.env = {k: v for k, v in self.env.items() if k not in drop}
        self.env["PYTHONPYCACHEPREFIX"] = str(args.workdir / "pycache")
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [os.getenv("PYTHONPATH"), str(h.REPO)])
        )

    def measure(self, cmd: Command) -> Result:
        res, e = Result(cmd.name, cmd.target), self.e
        with closing(h.ro_connect(self.db)) as con:  # what the baseline must print
            rows = sum(len(con.execute(sql, e).fetchall()) for sql in cmd.queries)

        def ours(db: Path) -> float:
            args = [a.format(**e) for a in cmd.args]
            seconds, lines = run(
                [*self.prefix, args[0], "--database", str(db), *args[1:]], self.env
            )
            try:
                ok = cmd.check(lines, e)
            except (ValueError, KeyError, IndexError):
                ok = False
            if not ok:
                raise CommandFailed(f"printed the wrong thing: {len(lines)} lines, {lines[:2]}")
            return seconds

        def base(db: Path) -> float:
            seconds, lines = run(
                [sys.executable, "-c", baseline_code(e), str(db), *cmd.queries], self.env
            )
            if len(lines) != rows:
                raise CommandFailed(f"baseline printed {len(lines)} rows, not {rows}")
            return seconds

        try:
            ours(self.db), base(self.db)
            res.ours_cold_s, res.base_cold_s = self.cold(ours, res), self.cold(base, res)
            warm = [(ours(self.db), base(self.db)) for _ in range(self.repeat)]
        except CommandFailed as exc:
            res.problems.append(str(exc))
            return res
        res.ours_warm_s = statistics.median(w[0] for w in warm)
        res.base_warm_s = statistics.median(w[1] for w in warm)
        return res

    def cold(self, timed: Callable[[Path], float], res: Result) -> float:
        """One run on an emptied page cache or, if more than 1 % of the file stays
        cached, the first run on a fresh copy (which may be cached too: it is said)."""
        method = h.drop_page_cache([self.db, Path(f"{self.db}-wal")])
        if not (resident := h.resident_fraction(self.db)) > 0.01:  # NaN: the kernel won't say
            res.cold.append((method, resident))
            return timed(self.db)
        copy = self.db.with_name("cold-copy.db")
        shutil.copyfile(self.db, copy)
        try:
            res.cold.append(("fresh copy", h.resident_fraction(copy)))
            return timed(copy)
        finally:
            copy.unlink(missing_ok=True)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = p.add_argument
    add("--frames", type=int, nargs="+", default=[1_000_000, 5_000_000], help="sizes measured")
    add("--repeat", type=int, default=5, help="warm runs of each (median)")
    add("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recorder-bench-query")
    add("--rebuild", action="store_true", help="build the databases again")
    h.common_options(p)
    args = p.parse_args()
    if min(args.frames) < 1 or args.repeat < 1:
        p.error("--frames and --repeat must be at least 1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes: dict[int, list[Result]] = {}
    try:
        for frames in args.frames:
            measurer = Measurer(database(frames, args), args)
            sizes[frames] = []
            for cmd in COMMANDS:
                print(f"  {frames:,}: {cmd.name} ...", file=sys.stderr, flush=True)
                sizes[frames].append(measurer.measure(cmd))
    except h.BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    headline, targets = {}, {}
    for frames, results in sizes.items():
        for r in results:
            for problem in r.problems:
                print(f"FAILED {r.command}: {problem}", file=sys.stderr)
            warm = f"{r.ours_warm_s * 1e3:.0f} ms (base {r.base_warm_s * 1e3:.0f})"
            cold = f"cold {r.ours_cold_s * 1e3:.0f} (base {r.base_cold_s * 1e3:.0f})"
            headline[f"{r.command} @{frames:,}"] = f"{warm}, {cold}"
        colds = [c for r in results for c in r.cold]
        methods = ", ".join(sorted({m for m, _ in colds}))
        headline[f"cold @{frames:,}"] = (
            f"{methods}, at most {max((f for _, f in colds), default=1):.1%} cached"
        )
        scoped = [r.ours_warm_s < TARGET_SCOPED_S for r in results if r.target_s == TARGET_SCOPED_S]
        targets[f"session+status<0.3s@{frames:,}"] = all(scoped)
    stats = [r for rs in sizes.values() for r in rs if r.command == "stats"]
    targets["stats<1s"] = all(r.target_s and r.ours_warm_s < r.target_s for r in stats)
    summary = {"sizes": {f: [asdict(r) for r in rs] for f, rs in sizes.items()}}
    h.finish("query", summary, headline, targets, args)
    return 1 if any(r.problems for rs in sizes.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
