"""A recorder committing a firehose, as the benchmarks of ``recorder run`` watch it:
:class:`Recorder`, the polls of its database (:func:`wait_committed`), and
:func:`record_firehose`, which puts them together."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import harness as h

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
    raise h.BenchError(f"no VmHWM for pid {pid}")


class Recorder:
    """``recorder run`` with ``config`` (written to ``workdir/config.toml``), and its
    firehose connection as :func:`wait_committed` sees it."""

    def __init__(
        self, workdir: Path, config: str, instance: str = "default", die_with_parent: bool = False
    ) -> None:
        (path := workdir / "config.toml").write_text(config)
        args = [sys.executable, "-m", "recorder", "run", "--config", str(path)]
        self.child = h.Child("recorder", args, workdir, die_with_parent=die_with_parent)
        self.pid, self.instance = self.child.pid, instance
        self.cid = self.top = 0  # its link connection; that connection's frame_count
        self.cpu0 = self.done = 0.0  # its CPU when connected; when stream_end was seen

    def wait_started(self, deadline: h.Deadline) -> None:
        """Once it has logged ``recorder started`` (its link and proxy are up)."""
        h.wait_for_log(self.child, STARTED, max(deadline.left(), 0.1))

    def cpu(self) -> float:
        """CPU-seconds of its processes alive now."""
        return h.cpu_seconds(self.pid)

    def peak_rss_kib(self) -> int:
        """``VmHWM`` of its processes, summed: an upper bound on the tree's peak."""
        return sum(vm_hwm_kib(p) for p in process_tree(self.pid))

    def stop(self, timeout: float) -> dict[str, Any]:
        """SIGTERM (one at a time: a second one during the drain stops it at once); its exit
        code (None: it hung), whether it logged ``recorder stopped``, and its warnings."""
        exit_code = self.child.terminate(timeout)
        stopped, warnings = h.log_outcome(self.child.log())
        return {"exit_code": exit_code, "logged_stopped": stopped, "warnings": warnings}


def wait_committed(
    db: Database, recs: list[Recorder], deadline: h.Deadline, each_poll: Callable[[], None]
) -> None:
    """Until each recorder's link connection row exists (its CPU clock starts there),
    then until its ``stream_end`` row is visible; fails if no ``frame_count`` moves for
    STALL_S. ``each_poll`` runs at every poll (a check, a sample of its own)."""
    pending, changed = list(recs), time.monotonic()
    while pending:
        for r in list(pending):
            deadline.check("waiting for the recorder to commit")
            r.child.check_alive()
            if not r.cid:
                if (cid := db.scalar(LINK_SQL, r.instance)) is not None:
                    r.cid, r.cpu0 = cid, r.cpu()
            elif db.scalar(END_SQL, r.cid):
                r.done = time.time()
                pending.remove(r)
            elif (top := db.scalar(PROGRESS_SQL, r.cid) or 0) != r.top:
                r.top, changed = top, time.monotonic()
            elif time.monotonic() - changed > STALL_S:
                raise h.BenchError(f"nothing committed for {STALL_S:.0f} s")
        each_poll()
        if pending:
            time.sleep(POLL_S)


def record_firehose(
    db: Database,
    workdir: Path,
    frames: int,
    deadline: h.Deadline,
    names: tuple[str, ...] = ("default",),
    each_poll: Callable[[], None] = lambda: None,
    committed: Callable[[list[dict[str, Any]]], None] = lambda _: None,
    extra_config: str = "",
) -> list[dict[str, Any]]:
    """Recorders ``names``, each with its own simulator, committing a firehose into ``db``
    at once; per recorder, frames/s (N / (a poll sees ``stream_end`` - the first chunk's
    ``received_at_us``)), CPU and peak RSS, and its stop (``committed`` runs before it).
    ``extra_config`` is appended to each recorder's configuration (an [alerts] table)."""
    from firehose import start_simulator

    from recorder.simulator.database import build

    children: list[h.Child] = []
    recs: list[Recorder] = []
    try:
        if len(names) > 1:  # migrated first: two recorders' migrations at once collide
            build(db.url, [])
        for name in names:
            (wd := workdir / name).mkdir()
            sim, port = start_simulator(frames, wd, deadline)
            config = h.recorder_config(port, db.url, name) + NO_PROXY + extra_config
            recs.append(Recorder(wd, config, name))
            children += [sim, recs[-1].child]
        wait_committed(db, recs, deadline, each_poll)
        runs = []
        for r in recs:
            cpu, peak = r.cpu() - r.cpu0, r.peak_rss_kib() / 1024
            if not (first_us := db.scalar(SPAN_SQL, r.cid)):
                raise h.BenchError(f"{r.instance}: no stream_chunk rows")
            first = first_us / 1e6
            runs.append({"instance": r.instance, "fps": frames / (r.done - first), "first": first})
            runs[-1] |= {"done": r.done, "recorder_cpu_s": cpu, "peak_rss_mb": peak}
        committed(runs)
        for r, run in zip(recs, runs, strict=True):
            run |= r.stop(min(90.0, max(deadline.left(), 1.0)))
        return runs
    finally:
        for child in children:
            child.stop()
