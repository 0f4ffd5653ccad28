"""Process and database plumbing shared by the benchmarks in this folder.

``bench/ingest.py`` and ``bench/proxy.py`` each start the recorder and its counterparts
as separate processes, watch them through ``/proc`` and their logs, and read the
recorder's SQLite file read-only afterwards. This module holds those pieces once:

* :class:`BenchError` (the benchmark itself failed), :class:`Deadline` (the overall
  time limit) and :func:`scratch_dir` (the temporary directory of a run);
* :class:`Child`, a child process with its output in a log file, started with
  :func:`child_env`, and :func:`wait_for_log` to wait for a line in that log;
* :func:`free_port` for a listener on loopback, and :func:`recorder_config`, the
  recorder's configuration file;
* :func:`cpu_seconds` from ``/proc``;
* :func:`ro_connect` (read-only SQLite), :func:`poll_row` (a read while the recorder
  writes) and :func:`log_outcome` (what the recorder's JSON log says about its stop);
* :func:`drop_page_cache` and :func:`resident_fraction`, for cold-cache measurements.

The scripts run as ``python bench/<name>.py``, which puts this folder on ``sys.path``;
that is how ``from harness import ...`` finds this module, in the benchmark and in the
helper processes it starts from its own file. Importing it also puts the repository
on ``sys.path``, so that ``recorder`` imports from a plain checkout.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # a plain checkout, not installed
    sys.path.insert(0, str(REPO))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """The benchmark itself could not run (not a recorder result)."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.seconds = seconds

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
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


# --- processes ---------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    # Nothing from the caller's environment may redirect the recorder (database, config).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def cpu_seconds(pid: int, children: bool = True) -> float:
    """utime + stime of a live process and of its live descendants (the recorder's
    classifier and database processes).

    With ``children=False``, of the process alone. NaN if the process is gone.
    """
    total = 0.0
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if p == pid:
                return float("nan")
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        if not children:
            break
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


class Child:
    """A child process whose output goes to a file; always reaped by :meth:`kill`.

    stdin and stdout are pipes only where asked for (``pipe_stdin``, ``pipe_stdout``);
    ``die_with_parent`` has the kernel SIGTERM the child if the benchmark dies.
    """

    # Every child still running, so that main() can stop them whatever went wrong.
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
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else self._log,
            stderr=self._log,
            cwd=workdir,
            env=child_env(),
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        self.pid = self.proc.pid
        Child.live.add(self)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM, wait up to ``timeout``; returns the exit code or None if it hung."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """:meth:`terminate`, then :meth:`kill` (which also reaps it and closes its log):
        for a child whose exit code does not matter (a simulator, a peer)."""
        self.terminate(timeout)
        self.kill()

    @classmethod
    def kill_all(cls) -> None:
        """Kill every child not yet killed: what main() does last, however the run ended."""
        for child in list(cls.live):
            child.kill()

    def kill(self) -> None:
        Child.live.discard(self)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self.alive():
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


def wait_for_log(child: Child, pattern: re.Pattern[str], seconds: float) -> re.Match[str]:
    """The first match of ``pattern`` in the child's log, waiting up to ``seconds`` (30 at
    most); BenchError if the child exits or the time is up first."""
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


# --- the recorder's configuration --------------------------------------------------------

# No heartbeat within a run: each one is a ping the recorder sends and records, frames
# the benchmarks did not ask for. Callers append the sections they need ([proxy], ...).
RECORDER_CONFIG = """\
[daemon]
url = "ws://127.0.0.1:{port}"

[heartbeat]
interval = 3600.0
timeout = 600.0

[storage]
url = "{url}"
{instance}shutdown_timeout = 60.0

[log]
level = "info"
format = "json"
"""


def recorder_config(port: int, url: str, instance: str = "default") -> str:
    """The configuration file of a recorder whose daemon listens on ``port`` and whose
    ``storage.url`` is ``url``; ``storage.instance`` is left out for ``default``."""
    line = "" if instance == "default" else f'instance = "{instance}"\n'
    return RECORDER_CONFIG.format(port=port, url=url, instance=line)


# --- the recorder's output ---------------------------------------------------------------


def ro_connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10, isolation_level=None)


def poll_row(db: Path, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """One row of a database a recorder is writing, in one short read transaction; None
    while the file or its tables do not exist yet (or no row)."""
    try:
        con = ro_connect(db)
    except sqlite3.Error:
        return None
    try:
        row = con.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None
    except sqlite3.Error:
        return None
    finally:
        con.close()


def parse_log(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                events.append(obj)
    return events


def log_outcome(text: str) -> tuple[bool, list[str]]:
    """From the recorder's JSON log: did it log ``recorder stopped``, and its warnings
    and errors (``level: event``)."""
    events = parse_log(text)
    stopped = any(e.get("event") == "recorder stopped" for e in events)
    warnings = [
        f"{e.get('level')}: {e.get('event')}"
        for e in events
        if e.get("level") in ("warning", "error", "critical")
    ]
    return stopped, warnings


def yes(flag: bool) -> str:
    """How the benchmarks print a check: a missed one stands out."""
    return "yes" if flag else "NO"


def targets_line(targets: dict[str, bool]) -> str:
    return "  targets: " + ", ".join(f"{name} {yes(met)}" for name, met in targets.items())


# --- the page cache ----------------------------------------------------------------------

PROT_READ = 1
MAP_SHARED = 1


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_fraction(path: Path) -> float:
    """The share of a file's pages that are in the page cache (``mincore``); NaN if the
    kernel would not say. Mapping the file does not read it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return float("nan")
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0.0
        libc = _libc()
        addr = libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return float("nan")
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return float("nan")
            return sum(b & 1 for b in bytes(vec)) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop_page_cache(paths: list[Path]) -> str:
    """Before a cold measurement: empty the page cache; returns how.

    ``drop_caches``: ``sync``, then ``1`` into ``/proc/sys/vm/drop_caches`` (root, and a
    writable ``/proc/sys``): every clean page of every file goes, the interpreter's and
    the libraries' too. Otherwise ``fadvise``: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on
    each of ``paths`` (any user who can open them; clean pages only, so they are synced
    first). Check the outcome with :func:`resident_fraction`.
    """
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


# --- the common options and the common ending ---------------------------------------------

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
    and targets as lines; with ``--history``, the headline as a dated row of the runs
    table in docs/benchmarks-history.md (made under :data:`HISTORY_HEADING` if missing).

    ``headline`` is the few figures a reader compares across days, already formatted,
    each beside its baseline where it has one (e.g. ``"0.53 (133 560 / 252 803 f/s)"``).
    """
    if args.json:
        print(json.dumps(summary | {"targets": targets}, indent=2, default=str))
    else:
        width = max((len(k) for k in headline), default=0)
        for name, value in headline.items():
            print(f"  {name:<{width}}  {value}")
        if targets:
            print(targets_line(targets))
    if getattr(args, "history", False):
        add_history_row(bench, headline, targets)


def add_history_row(bench: str, headline: dict[str, str], targets: dict[str, bool]) -> None:
    """One dated line under the runs table: which bench, which code, its headline."""
    from report import source_digest  # report imports this module

    day = time.strftime("%Y-%m-%d", time.gmtime())
    figures = "; ".join(f"{k} {v}" for k, v in headline.items()).replace("|", "/")
    missed = ", ".join(name for name, met in targets.items() if not met) or "none"
    row = f"| {day} | {bench} | `{source_digest()}` | {figures} | {missed} |\n"
    text = HISTORY.read_text() if HISTORY.exists() else "# Benchmarks: history\n"
    if HISTORY_HEADING not in text:
        text = text.rstrip("\n") + (
            f"\n\n{HISTORY_HEADING}\n\n"
            "Rows appended by `make bench HISTORY=1` (`--history`): the day, the bench, the\n"
            "recorder code measured (`report.source_digest`), its headline figures beside\n"
            "their baselines, and the targets it missed.\n\n"
            "| day | bench | code | headline | missed |\n"
            "| --- | --- | --- | --- | --- |\n"
        )
    HISTORY.write_text(text.rstrip("\n") + "\n" + row)
