"""Run a recorder and watch it commit: the part every benchmark of ``recorder run`` shares.

* :class:`Recorder`: ``python -m recorder run --config <workdir>/config.toml`` as a
  :class:`harness.Child`, with the CPU-seconds and peak RSS of its whole process tree
  (service -> classifier -> database) and :meth:`Recorder.stop`, which gives its
  :class:`Stopped` outcome (exit code after SIGTERM, and what its JSON log says);
* :class:`Progress`: a connection's committed frames as polls see them, which fails
  the benchmark when nothing is committed for too long, and :func:`steady_rate`;
* :func:`migrate` (``recorder db upgrade``), and the SQL the benchmarks poll a
  firehose connection with, the same on SQLite and PostgreSQL (``bench/databases.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import BenchError, Child, Deadline, cpu_seconds, log_outcome, wait_for_log

# No proxy: the firehose benchmarks do not use it, and two recorders cannot both have
# its default port.
NO_PROXY = """
[proxy]
enabled = false
"""

STARTED = re.compile(r'"event": "recorder started"')

# The benchmarks' reads of a firehose connection, the same SQL on both databases.
LINK_SQL = "select min(id) from connections where instance = ?"
END_SQL = "select count(*) from frames where type = 'stream_end' and connection_id = ?"
PROGRESS_SQL = "select frame_count from connections where id = ?"
SPAN_SQL = (
    "select min(received_at_us), max(received_at_us) from frames"
    " where connection_id = ? and type in ('stream_chunk', 'stream_end')"
)


def process_tree(pid: int) -> list[int]:
    """The pid and all its descendants (the recorder: service -> classifier -> database)."""
    import psutil

    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


@dataclass
class Stopped:
    """How a recorder ended after SIGTERM: its exit code (None if it hung), whether it
    logged ``recorder stopped``, and the warnings and errors it logged."""

    exit_code: int | None
    logged_stopped: bool
    warnings: list[str]


class Recorder:
    """``recorder run`` with ``config`` (written to ``workdir/config.toml``), its output
    in ``workdir/<name>.log``; always reaped by :meth:`kill`."""

    def __init__(
        self, workdir: Path, config: str, *, name: str = "recorder", die_with_parent: bool = False
    ) -> None:
        path = workdir / "config.toml"
        path.write_text(config)
        args = [sys.executable, "-m", "recorder", "run", "--config", str(path)]
        self.child = Child(name, args, workdir, die_with_parent=die_with_parent)
        self.pid = self.child.pid

    def wait_started(self, deadline: Deadline) -> None:
        """Return once it has logged ``recorder started`` (its link and proxy are up)."""
        wait_for_log(self.child, STARTED, max(deadline.left(), 0.1))

    def check_alive(self, instance: str) -> None:
        if not self.child.alive():
            raise BenchError(f"recorder {instance} exited early:\n{self.child.log()[-2000:]}")

    def cpu(self) -> float:
        """CPU-seconds of its processes alive now, each one's own."""
        return sum(cpu_seconds(p, children=False) for p in process_tree(self.pid))

    def main_cpu(self) -> float:
        """CPU-seconds of the service process alone."""
        return cpu_seconds(self.pid, children=False)

    def peak_rss_kib(self) -> int:
        """``VmHWM`` of its processes, summed: an upper bound on the tree's peak (the
        processes' peaks need not coincide, and shared libraries count once each)."""
        return sum(vm_hwm_kib(p) for p in process_tree(self.pid))

    def stop(self, timeout: float) -> Stopped:
        """SIGTERM, then its exit code and log. One recorder at a time: a second SIGTERM
        during its drain would stop it at once."""
        exit_code = self.child.terminate(timeout)
        stopped, warnings = log_outcome(self.child.log())
        return Stopped(exit_code, stopped, warnings)

    def kill(self) -> None:
        self.child.kill()


@dataclass
class Progress:
    """One connection's committed frames as the polls saw them: ``(time.time(), rows)``."""

    what: str
    stall: float  # seconds without a new commit before the benchmark fails
    samples: list[tuple[float, int]] = field(default_factory=list)
    _top: int = -1
    _changed: float = field(default_factory=time.monotonic)

    def note(self, top: int) -> None:
        self.samples.append((time.time(), top))
        if top != self._top:
            self._top, self._changed = top, time.monotonic()
        elif time.monotonic() - self._changed > self.stall:
            raise BenchError(
                f"{self.what}: no frame committed for {self.stall:.0f} s (stuck at {top} rows)"
            )


def steady_rate(progress: list[tuple[float, int]], frames: int) -> float:
    """Committed rows/s between 10 % and 90 % of the frames: no start-up, no final flush."""
    lo = next((p for p in progress if p[1] >= frames // 10), None)
    hi = next((p for p in progress if p[1] >= frames * 9 // 10), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return float("nan")
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


def migrate(url: str, workdir: Path, deadline: Deadline) -> None:
    """``recorder db upgrade`` on ``url``, before recorders start on it together."""
    args = [sys.executable, "-m", "recorder", "db", "upgrade", "--database", url]
    child = Child("migrate", args, workdir)
    try:
        code = child.proc.wait(timeout=max(min(deadline.left(), 120.0), 1.0))
    except subprocess.TimeoutExpired:
        raise BenchError("`recorder db upgrade` did not finish") from None
    finally:
        child.kill()
    if code != 0:
        raise BenchError(f"`recorder db upgrade` failed:\n{child.log()[-2000:]}")
