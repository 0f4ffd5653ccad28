"""How the query benchmark times a command: each run a process of its own, its output
read to the end; warm runs alternating with the baseline's, cold runs after the page
cache is emptied (:class:`Measurer`).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import REPO, BenchError, drop_page_cache, resident_fraction
from query_commands import Command, Expect, baseline_code, baseline_rows

# --- running the CLI ---------------------------------------------------------------------


def cli_prefix() -> list[str]:
    """The ``recorder`` console script next to this interpreter, if it runs this
    interpreter; else ``python -m recorder``."""
    script = Path(sys.executable).parent / "recorder"
    try:
        first = script.read_text(errors="replace").splitlines()[0]
        if first.startswith("#!") and os.path.samefile(first[2:].strip(), sys.executable):
            return [str(script)]
    except (OSError, IndexError):
        pass
    return [sys.executable, "-m", "recorder"]


# Where the measured processes keep their bytecode (set by main()).
PYCACHE: list[Path] = []


def cli_env() -> dict[str, str]:
    """The caller's environment, minus anything that redirects the recorder,
    PYTHONUNBUFFERED (which would make every printed line a system call) and
    PYTHONDONTWRITEBYTECODE: an installed recorder has its bytecode, so the processes
    write theirs under the work directory (PYTHONPYCACHEPREFIX), not into the tree."""
    drop = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_") and k not in drop}
    if PYCACHE:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE[0])
    # A plain checkout: `python -m recorder` must find the package.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    return env


@dataclass
class Run:
    seconds: float
    code: int
    stdout: str
    stderr: str


def run_process(args: list[str], cwd: Path, timeout: float = 300.0) -> Run:
    """Start, read stdout and stderr to the end, wait; wall time around all of it."""
    env = cli_env()
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(args[:4])} ... took over {timeout:.0f} s") from exc
    seconds = time.perf_counter() - start
    return Run(
        seconds,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


# --- 4. measuring ------------------------------------------------------------------------


@dataclass
class Cold:
    """How the page cache was emptied before a cold run, and what was left of the file."""

    method: str
    resident: float


@dataclass
class Result:
    command: str
    target_s: float | None
    ours_warm_s: float = float("nan")
    base_warm_s: float = float("nan")
    ours_cold_s: float = float("nan")
    base_cold_s: float = float("nan")
    ours_runs_s: list[float] = field(default_factory=list)
    base_runs_s: list[float] = field(default_factory=list)
    ours_cold: Cold | None = None
    base_cold: Cold | None = None
    output_lines: int = 0
    output_bytes: int = 0
    baseline_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        return None if self.target_s is None else self.ours_warm_s < self.target_s


class Measurer:
    def __init__(self, db: Path, workdir: Path, cold_mode: str, repeat: int) -> None:
        self.db = db
        self.workdir = workdir
        self.cold_mode = cold_mode
        self.repeat = repeat
        self.prefix = cli_prefix()
        if re.search(r"[?#%]", str(db)):
            raise BenchError(f"{db}: the baseline's file: URI cannot hold ? # or %")

    def ours_args(self, cmd: Command, db: Path) -> list[str]:
        return [*self.prefix, *(str(db) if a == "{db}" else a for a in cmd.args)]

    def base_args(self, cmd: Command, db: Path) -> list[str]:
        return [sys.executable, "-c", baseline_code(cmd.queries), str(db)]

    def files(self, db: Path) -> list[Path]:
        return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]

    def cold_run(self, args: Callable[[Path], list[str]]) -> tuple[Run, Cold]:
        """One run on an emptied page cache (or, failing that, on a fresh copy)."""
        if self.cold_mode != "copy":
            method = drop_page_cache(self.files(self.db))
            resident = resident_fraction(self.db)
            # NaN (the kernel would not say) counts as emptied.
            if self.cold_mode == "drop" or not resident > 0.01:
                return run_process(args(self.db), self.workdir), Cold(method, resident)
        copy = self.workdir / "cold-copy.db"
        shutil.copyfile(self.db, copy)
        try:
            resident = resident_fraction(copy)
            return run_process(args(copy), self.workdir), Cold("fresh copy", resident)
        finally:
            for p in self.files(copy):
                p.unlink(missing_ok=True)

    def measure(self, cmd: Command, e: Expect) -> Result:
        res = Result(cmd.name, cmd.target)
        res.baseline_rows = baseline_rows(self.db, cmd.queries)

        def ours(db: Path) -> list[str]:
            return self.ours_args(cmd, db)

        def base(db: Path) -> list[str]:
            return self.base_args(cmd, db)

        def check(run: Run, kind: str) -> None:
            if run.code != 0:
                res.problems.append(f"{kind} exited {run.code}: {run.stderr.strip()[-300:]}")
                return
            lines = run.stdout.splitlines()
            if kind.startswith("ours"):
                res.output_lines, res.output_bytes = len(lines), len(run.stdout.encode())
                found = cmd.check(lines, e)
            elif len(lines) != res.baseline_rows:
                found = [f"{len(lines)} rows printed, expected {res.baseline_rows}"]
            else:
                found = []
            res.problems += [f"{kind}: {p}" for p in found if f"{kind}: {p}" not in res.problems]

        # The warm-up first: its bytecode is on disk before the cold runs.
        check(run_process(ours(self.db), self.workdir), "ours warm-up")
        check(run_process(base(self.db), self.workdir), "baseline warm-up")
        run, res.ours_cold = self.cold_run(ours)
        res.ours_cold_s = run.seconds
        check(run, "ours cold")
        run, res.base_cold = self.cold_run(base)
        res.base_cold_s = run.seconds
        check(run, "baseline cold")
        for _ in range(self.repeat):
            run = run_process(ours(self.db), self.workdir)
            res.ours_runs_s.append(run.seconds)
            check(run, "ours")
            run = run_process(base(self.db), self.workdir)
            res.base_runs_s.append(run.seconds)
            check(run, "baseline")
        res.ours_warm_s = statistics.median(res.ours_runs_s)
        res.base_warm_s = statistics.median(res.base_runs_s)
        return res
