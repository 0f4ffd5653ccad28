"""What every benchmark shares: its processes, its baseline measured in the same run
(:func:`alternate`), medians, and its ending (``--json``, ``--keep``, ``--history``).
Importing it puts the repository on ``sys.path``, for ``recorder`` in a plain checkout."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import math
import mmap
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # a plain checkout, not installed
    sys.path.insert(0, str(REPO))

T = TypeVar("T")


class BenchError(Exception):
    """The benchmark itself could not run (not a recorder result): exit status 2."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at, self.seconds = time.monotonic() + seconds, seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise BenchError(f"overall timeout ({self.seconds:.0f} s) while {what}")


@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A fresh temporary directory for one benchmark; removed at the end unless ``keep``."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        Child.kill_all()  # before their logs go
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _child_setup(die_with_parent: bool) -> None:
    """In the child, before exec: Ctrl-C acts as at a terminal (a benchmark started in
    the background has SIGINT ignored, which exec keeps), and with ``die_with_parent``
    SIGTERM comes when the benchmark dies (PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if die_with_parent:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class Child:
    """A child process whose output goes to ``workdir/<name>.log``; reaped by :meth:`kill`
    (or by :meth:`kill_all`, which every benchmark's ending calls)."""

    live: ClassVar[set[Child]] = set()

    def __init__(
        self,
        name: str,
        args: list[str],
        workdir: Path,
        *,
        pipe_stdin: bool = False,
        pipe_stdout: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        self.name, self.log_path = name, workdir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")
        # Nothing from the caller's environment may redirect the recorder (database, config).
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else self._log,
            stderr=self._log,
            cwd=workdir,
            env=env,
            preexec_fn=functools.partial(_child_setup, die_with_parent),
        )
        self.pid = self.proc.pid
        Child.live.add(self)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited early:\n{self.log()[-2000:]}")

    def terminate(self, timeout: float, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (or ``sig``), wait up to ``timeout``; the exit code, or None if it hung."""
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """For a child whose exit code does not matter (a simulator, a peer)."""
        self.terminate(timeout)
        self.kill()

    @classmethod
    def kill_all(cls) -> None:
        for child in list(cls.live):
            child.kill()

    def kill(self) -> None:
        Child.live.discard(self)
        for pipe in filter(None, (self.proc.stdin, self.proc.stdout)):
            with contextlib.suppress(OSError):
                pipe.close()
        if self.alive():
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


def wait_for_log(child: Child, pattern: re.Pattern[str], seconds: float) -> re.Match[str]:
    """The first match of ``pattern`` in the child's log within ``seconds`` (30 at most)."""
    until = time.monotonic() + min(30.0, seconds)
    while time.monotonic() < until:
        if (m := pattern.search(child.log())) is not None:
            return m
        if not child.alive():
            break
        time.sleep(0.05)
    raise BenchError(f"{child.name} did not start:\n{child.log()[-2000:]}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a child to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int, children: bool = True) -> float:
    """utime + stime of a live process and (``children``) its live descendants; NaN if
    the process is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total: float = sum(proc.cpu_times()[:2])
        procs = proc.children(recursive=True) if children else []
    except psutil.NoSuchProcess:
        return float("nan")
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(p.cpu_times()[:2])
    return total


def recorder_config(port: int, url: str, instance: str = "default") -> str:
    """A recorder whose daemon listens on ``port``, writing to ``url``; callers append
    the sections they need ([proxy], [cleanup], ...). No heartbeat within a run: each
    ping would be a frame the benchmark did not ask for."""
    return (
        f'daemon = {{url = "ws://127.0.0.1:{port}"}}\n'
        "heartbeat = {interval = 3600.0, timeout = 600.0}\n"
        'log = {level = "info", format = "json"}\n'
        f'[storage]\nurl = "{url}"\ninstance = "{instance}"\nshutdown_timeout = 60.0\n'
    )


def log_outcome(text: str) -> tuple[bool, list[str]]:
    """From the recorder's JSON log: did it log ``recorder stopped``, and its warnings."""
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            if isinstance(obj := json.loads(line), dict):
                events.append(obj)
    stopped = any(e.get("event") == "recorder stopped" for e in events)
    bad = ("warning", "error", "critical")
    return stopped, [f"{e['level']}: {e.get('event')}" for e in events if e.get("level") in bad]


def ro_connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10, isolation_level=None)


def poll_row(db: Path, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """One row of a file a recorder is writing, in one short read; None while the file
    or its tables do not exist yet (or no row)."""
    try:
        with contextlib.closing(ro_connect(db)) as con:
            row = con.execute(sql, params).fetchone()
    except sqlite3.Error:
        return None
    return tuple(row) if row is not None else None


def resident_fraction(path: Path) -> float:
    """The share of a file's pages in the page cache (``mincore`` over a mapping, which
    reads nothing); NaN if the kernel would not say."""
    try:
        with open(path, "rb") as f:
            if (size := os.fstat(f.fileno()).st_size) == 0:
                return 0.0
            # Private (copy-on-write) only so that ctypes may take its address.
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
                vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
                start = ctypes.c_char.from_buffer(m)
                ok = ctypes.CDLL(None).mincore(ctypes.byref(start), ctypes.c_size_t(size), vec)
                del start  # the mapping cannot close while ctypes holds it
                return sum(b & 1 for b in bytes(vec)) / len(vec) if ok == 0 else float("nan")
    except OSError:
        return float("nan")


def drop_page_cache(paths: list[Path]) -> str:
    """Empty the page cache before a cold measurement; returns how: ``drop_caches`` (root:
    every clean page of every file) or ``fadvise`` (DONTNEED on ``paths``, synced first)."""
    os.sync()
    with contextlib.suppress(OSError):
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    for path in paths:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return "fadvise"


def median(values: Iterable[float | None]) -> float:
    """The median of the values that were measured (not None, not NaN); NaN for none."""
    known = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(known) if known else float("nan")


def alternate(
    repeat: int, root: Path, kinds: dict[str, Callable[[Path], T]], quiet: bool = False
) -> dict[str, list[T]]:
    """Each kind measured in turn, ``repeat`` times (the baseline first): a baseline and
    its measurement see the same machine, whatever else runs on it."""
    runs: dict[str, list[T]] = {kind: [] for kind in kinds}
    for i in range(repeat):
        for kind, measure in kinds.items():
            if not quiet:
                print(f"run {i + 1}/{repeat}: {kind} ...", file=sys.stderr, flush=True)
            runs[kind].append(measure(root))
    return runs


def run(main: Callable[[], int]) -> int:
    """A benchmark's ``main``: exit 2 with one line if the benchmark itself failed, and
    every child stopped however it ended (SIGTERM included)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return main()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        Child.kill_all()


def yes(flag: bool) -> str:
    """How the benchmarks print a check: a missed one stands out."""
    return "yes" if flag else "NO"


def targets_line(targets: dict[str, bool]) -> str:
    return "  targets: " + ", ".join(f"{name} {yes(met)}" for name, met in targets.items())


HISTORY = REPO / "docs" / "benchmarks-history.md"
HISTORY_HEADING = "## Runs"


def common_options(parser: Any) -> None:
    """The options every benchmark takes: ``--json``, ``--keep`` and ``--history``."""
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    parser.add_argument(
        "--history",
        action="store_true",
        help=f"append a dated row of the headline figures to {HISTORY.relative_to(REPO)}",
    )


def finish(
    bench: str,
    summary: dict[str, Any],
    headline: dict[str, str],
    targets: dict[str, bool],
    args: Any,
) -> None:
    """How every benchmark ends: the summary as JSON (``--json``) or its headline figures
    (formatted, each beside its baseline) and targets as lines; ``--history`` appends
    the headline as a dated row to docs/benchmarks-history.md."""
    if args.json:
        print(json.dumps(summary | {"targets": targets}, indent=2, default=str))
    else:
        print(f"{bench} benchmark")
        width = max((len(k) for k in headline), default=0)
        for name, value in headline.items():
            print(f"  {name:<{width}}  {value}")
        if targets:
            print(targets_line(targets))
    if getattr(args, "history", False):
        add_history_row(bench, headline, targets)


def source_digest() -> str:
    """Which recorder code was measured: SHA-256 over every recorder/**/*.py, as its path
    relative to recorder/ and its bytes, in path order (12 hex digits)."""
    root, digest = REPO / "recorder", hashlib.sha256()
    for rel in sorted(path.relative_to(root).as_posix() for path in root.rglob("*.py")):
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return digest.hexdigest()[:12]


def add_history_row(bench: str, headline: dict[str, str], targets: dict[str, bool]) -> None:
    """One dated line under the runs table: which bench, which code, its headline."""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    figures = "; ".join(f"{k} {v}" for k, v in headline.items()).replace("|", "/")
    missed = ", ".join(name for name, met in targets.items() if not met) or "none"
    row = f"| {day} | {bench} | `{source_digest()}` | {figures} | {missed} |\n"
    text = HISTORY.read_text() if HISTORY.exists() else "# Benchmarks: history\n"
    if HISTORY_HEADING not in text:
        text = text.rstrip("\n") + (
            f"\n\n{HISTORY_HEADING}\n\n"
            "Rows appended by `make bench HISTORY=1` (`--history`): the day, the bench, the\n"
            "recorder code measured (`harness.source_digest`), its headline figures beside\n"
            "their baselines, and the targets it missed.\n\n"
            "| day | bench | code | headline | missed |\n| --- | --- | --- | --- | --- |\n"
        )
    HISTORY.write_text(text.rstrip("\n") + "\n" + row)
