"""One recorder measurement of the ingest benchmark: recorders committing firehoses.

:func:`run_recorders` gives each recorder a fresh simulator (``bench/firehose.py``),
starts them together on one fresh database (``bench/databases.py``), polls the database
until each one's ``stream_end`` row is committed, reads their CPU and peak RSS, stops
them (``bench/recording.py``) and checks their rows (``bench/firehose_rows.py``). The
method is in ``bench/ingest.py``'s docstring.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from databases import Database, server_cpu_delta
from firehose import start_simulator
from firehose_rows import LossReport, verify_firehose
from harness import BenchError, Child, Deadline, cpu_seconds, recorder_config
from recording import (
    END_SQL,
    LINK_SQL,
    NO_PROXY,
    PROGRESS_SQL,
    SPAN_SQL,
    Progress,
    Recorder,
    Stopped,
    migrate,
    steady_rate,
)

# storage.instance of each recorder with --recorders N (one recorder keeps the default).
INSTANCES = ("bench-a", "bench-b", "bench-c", "bench-d")


@dataclass
class RecorderRun:
    frames: int
    seconds: float
    fps: float
    receive_fps: float
    steady_fps: float
    commit_lag_s: float
    poll_interval_s: float
    peak_rss_mb: float
    recorder_cpu_s: float
    simulator_cpu_s: float
    exit_code: int | None
    logged_stopped: bool
    warnings: list[str]
    loss: LossReport
    instance: str = "default"
    first_us: int = 0
    done: float = 0.0


@dataclass
class Measurement:
    """One measurement: one or more recorders into one fresh database, at once."""

    database: str
    runs: list[RecorderRun]
    # All the recorders' frames / (the last stream_end seen - the first chunk received).
    combined_fps: float
    # The sum of the recorders' commit rates while all of them were committing (NaN: one).
    overlap_fps: float
    # Between the first chunks the recorders received.
    start_spread_s: float
    # The database server's processes over the window (NaN for SQLite: in the recorder).
    database_cpu_s: float


@dataclass
class Recording:
    """A recorder of a measurement while it runs, with its own simulator."""

    instance: str
    workdir: Path
    sim: Child
    port: int
    progress: Progress
    rec: Recorder | None = None
    cid: int | None = None
    done: float = 0.0
    # Over the measured window, from its connection to its stream_end; then how it stopped.
    cpu_s: float = 0.0
    simulator_cpu_s: float = 0.0
    peak_kib: int = 0
    stopped: Stopped = field(default_factory=lambda: Stopped(None, False, []))


class Measuring:
    """The recorders of one measurement, their simulators and their database, while
    they run: started, watched until committed, stopped, then read back."""

    def __init__(
        self, frames: int, poll: float, stall: float, deadline: Deadline, db: Database
    ) -> None:
        self.frames, self.poll, self.stall = frames, poll, stall
        self.deadline, self.db = deadline, db
        self.recs: list[Recording] = []
        self.db_cpu = float("nan")

    def start(self, workdir: Path, names: list[str]) -> None:
        for name in names:
            wd = workdir if len(names) == 1 else workdir / name
            wd.mkdir(exist_ok=True)
            sim, port = start_simulator(self.frames, wd, self.deadline)
            self.recs.append(Recording(name, wd, sim, port, Progress(name, self.stall)))
        if len(names) > 1:
            # Recorders started together on a new database would each migrate it, and
            # two migrations at once collide (the second one's writer does not start):
            # migrate it first, so that they start together on a migrated database.
            migrate(self.db.url, workdir, self.deadline)
        # Started together: with several, the firehoses overlap.
        for r in self.recs:
            config = recorder_config(r.port, self.db.url, r.instance) + NO_PROXY
            r.rec = Recorder(r.workdir, config)

    def wait_connected(self) -> None:
        """Until each recorder's link connection row exists (migrations done, firehose
        starting): where the CPU clocks start."""
        for r in self.recs:
            while (cid := self.db.scalar(LINK_SQL, r.instance)) is None:
                self.deadline.check("waiting for the recorder to connect")
                self.recorder(r).check_alive(r.instance)
                time.sleep(self.poll)
            r.cid = cid

    def wait_committed(self) -> None:
        """Until the stream_end row of each recorder's connection is visible; the
        connection's frame_count in between, for the steady rate and the stall check."""
        pending = list(self.recs)
        while pending:
            for r in list(pending):
                if self.db.scalar(END_SQL, r.cid):
                    r.done = time.time()
                    pending.remove(r)
                    continue
                self.deadline.check("waiting for the recorder to commit")
                self.recorder(r).check_alive(r.instance)
                r.progress.note(self.db.scalar(PROGRESS_SQL, r.cid) or 0)
            if pending:
                time.sleep(self.poll)

    def measure(self) -> None:
        """From connected to committed: each one's CPU and peak RSS, and the server's."""
        self.wait_connected()
        # The recorder's whole process tree, as at the end of the window.
        rec_cpu0 = [self.recorder(r).cpu() for r in self.recs]
        sim_cpu0 = [cpu_seconds(r.sim.pid, children=False) for r in self.recs]
        db_cpu0 = self.db.server_cpu()
        self.wait_committed()
        for r, rec0, sim0 in zip(self.recs, rec_cpu0, sim_cpu0, strict=True):
            r.cpu_s = self.recorder(r).cpu() - rec0
            r.simulator_cpu_s = cpu_seconds(r.sim.pid, children=False) - sim0
        if db_cpu0:
            self.db_cpu = server_cpu_delta(db_cpu0, self.db.server_cpu())
        for r in self.recs:
            r.peak_kib = self.recorder(r).peak_rss_kib()

    def stop(self) -> None:
        # One at a time: a second SIGTERM during the drain would stop it at once.
        for r in self.recs:
            r.stopped = self.recorder(r).stop(min(90.0, max(self.deadline.left(), 1.0)))

    def kill(self) -> None:
        for r in self.recs:
            if r.rec is not None:
                r.rec.kill()
            r.sim.stop()

    def recorder(self, r: Recording) -> Recorder:
        assert r.rec is not None
        return r.rec

    def run(self, r: Recording) -> RecorderRun:
        """What one recorder measured, from the samples and its rows."""
        frames = self.frames
        first_us, last_us = self.db.row(SPAN_SQL, r.cid) or (None, None)
        if first_us is None:
            raise BenchError(f"{r.instance}: no stream_chunk rows")
        seconds = r.done - first_us / 1e6
        return RecorderRun(
            frames=frames,
            seconds=seconds,
            fps=frames / seconds,
            receive_fps=frames / max((last_us - first_us) / 1e6, 1e-9),
            steady_fps=steady_rate(r.progress.samples, frames),
            commit_lag_s=r.done - last_us / 1e6,
            poll_interval_s=self.poll,
            peak_rss_mb=r.peak_kib / 1024,
            recorder_cpu_s=r.cpu_s,
            simulator_cpu_s=r.simulator_cpu_s,
            exit_code=r.stopped.exit_code,
            logged_stopped=r.stopped.logged_stopped,
            warnings=r.stopped.warnings,
            loss=verify_firehose(self.db, r.instance, frames),
            instance=r.instance,
            first_us=first_us,
            done=r.done,
        )


def run_recorders(
    frames: int,
    root: Path,
    deadline: Deadline,
    poll: float,
    stall: float,
    make_database: Callable[[Path], Database],
    count: int = 1,
) -> Measurement:
    workdir = Path(tempfile.mkdtemp(prefix="recorder-", dir=root))
    names = ["default"] if count == 1 else list(INSTANCES[:count])
    db = make_database(workdir)
    m = Measuring(frames, poll, stall, deadline, db)
    try:
        try:
            m.start(workdir, names)
            m.measure()
            m.stop()
        finally:
            m.kill()
        runs = [m.run(r) for r in m.recs]
    finally:
        db.close()
    first = min(r.first_us for r in runs) / 1e6
    return Measurement(
        database=db.kind,
        runs=runs,
        combined_fps=frames * len(runs) / (max(r.done for r in runs) - first),
        overlap_fps=overlap_rate(m.recs, runs),
        start_spread_s=(max(r.first_us for r in runs) - min(r.first_us for r in runs)) / 1e6,
        database_cpu_s=m.db_cpu,
    )


def overlap_rate(recs: list[Recording], runs: list[RecorderRun]) -> float:
    """Rows/s all recorders committed together while every one of them was committing
    (from the later first chunk to the earlier stream_end); NaN for one recorder."""
    if len(recs) < 2:
        return float("nan")
    start = max(r.first_us for r in runs) / 1e6
    end = min(r.done for r in runs)
    total = 0.0
    for r in recs:
        inside = [p for p in r.progress.samples if start <= p[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return float("nan")
        total += (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
    return total
