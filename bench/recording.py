"""A recorder committing a firehose, as the benchmarks of ``recorder run`` watch it.

:class:`Recorder` is ``recorder run`` as a :class:`harness.Child`, with the CPU and peak
RSS of its process tree (service -> classifier -> database); :func:`wait_connected` and
:func:`wait_committed` poll a :class:`databases.Database` until each recorder's link
connection exists, then until its ``stream_end`` row is committed (frames commit in
order, so every chunk before it is).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness import BenchError, Child, Deadline, cpu_seconds, log_outcome, wait_for_log

if TYPE_CHECKING:
    from databases import Database

# No proxy: the firehose benchmarks do not use it, and two recorders cannot share its port.
NO_PROXY = "\n[proxy]\nenabled = false\n"
STARTED = re.compile(r'"event": "recorder started"')
POLL_S = 0.05  # adds at most this much to a measured time
STALL_S = 60.0  # no new commit for this long fails the benchmark

# The benchmarks' reads of a firehose connection, the same SQL on both databases.
LINK_SQL = "select min(id) from connections where instance = ?"
END_SQL = "select count(*) from frames where type = 'stream_end' and connection_id = ?"
PROGRESS_SQL = "select frame_count from connections where id = ?"
SPAN_SQL = (
    "select min(received_at_us), max(received_at_us) from frames"
    " where connection_id = ? and type in ('stream_chunk', 'stream_end')"
)


def process_tree(pid: int) -> list[int]:
    """The pid and all its descendants."""
    import psutil

    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


@dataclass
class Stopped:
    """How a recorder ended after SIGTERM: exit code (None: it hung), whether it logged
    ``recorder stopped``, and its warnings and errors."""

    exit_code: int | None
    logged_stopped: bool
    warnings: list[str]


class Recorder:
    """``recorder run`` with ``config`` (written to ``workdir/config.toml``)."""

    def __init__(
        self, workdir: Path, config: str, *, name: str = "recorder", die_with_parent: bool = False
    ) -> None:
        path = workdir / "config.toml"
        path.write_text(config)
        args = [sys.executable, "-m", "recorder", "run", "--config", str(path)]
        self.child = Child(name, args, workdir, die_with_parent=die_with_parent)
        self.pid = self.child.pid

    def wait_started(self, deadline: Deadline) -> None:
        """Once it has logged ``recorder started`` (its link and proxy are up)."""
        wait_for_log(self.child, STARTED, max(deadline.left(), 0.1))

    def check_alive(self, instance: str = "") -> None:
        self.child.check_alive()

    def cpu(self) -> float:
        """CPU-seconds of its processes alive now."""
        return sum(cpu_seconds(p, children=False) for p in process_tree(self.pid))

    def peak_rss_kib(self) -> int:
        """``VmHWM`` of its processes, summed: an upper bound on the tree's peak."""
        return sum(vm_hwm_kib(p) for p in process_tree(self.pid))

    def stop(self, timeout: float) -> Stopped:
        """SIGTERM (one recorder at a time: a second SIGTERM during the drain stops it at
        once), then its exit code and log."""
        exit_code = self.child.terminate(timeout)
        return Stopped(exit_code, *log_outcome(self.child.log()))

    def kill(self) -> None:
        self.child.kill()


@dataclass
class Watched:
    """One recorder's firehose connection as the polls saw it."""

    rec: Recorder
    instance: str = "default"
    cid: int = 0
    done: float = 0.0  # wall clock when a poll first saw its stream_end committed
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, frame_count)


def wait_connected(db: Database, watched: list[Watched], deadline: Deadline) -> None:
    """Until each recorder's link connection row exists (migrated, firehose starting)."""
    for w in watched:
        while (cid := db.scalar(LINK_SQL, w.instance)) is None:
            deadline.check("waiting for the recorder to connect")
            w.rec.check_alive()
            time.sleep(POLL_S)
        w.cid = cid


def wait_committed(
    db: Database, watched: list[Watched], deadline: Deadline, each_poll: Callable[[], None]
) -> None:
    """Until each one's ``stream_end`` row is visible, noting its ``frame_count``;
    ``each_poll`` runs at every poll (a check, a sample of its own)."""
    pending = list(watched)
    changed = time.monotonic()
    while pending:
        for w in list(pending):
            if db.scalar(END_SQL, w.cid):
                w.done = time.time()
                pending.remove(w)
                continue
            deadline.check("waiting for the recorder to commit")
            w.rec.check_alive()
            top = db.scalar(PROGRESS_SQL, w.cid) or 0
            if not w.samples or top != w.samples[-1][1]:
                changed = time.monotonic()
            elif time.monotonic() - changed > STALL_S:
                raise BenchError(f"nothing committed for {STALL_S:.0f} s")
            w.samples.append((time.time(), top))
        each_poll()
        if pending:
            time.sleep(POLL_S)


def steady_rate(progress: list[tuple[float, int]], frames: int) -> float:
    """Committed rows/s between 10 % and 90 % of the frames: no start-up, no final flush."""
    lo = next((p for p in progress if p[1] >= frames // 10), None)
    hi = next((p for p in progress if p[1] >= frames * 9 // 10), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return float("nan")
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


def migrate(url: str, workdir: Path, deadline: Deadline) -> None:
    """``recorder db upgrade``: recorders started together on a new database would each
    migrate it, and two migrations at once collide."""
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
