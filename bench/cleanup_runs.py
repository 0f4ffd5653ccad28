"""A cleanup action under a firehose: the pieces ``bench/purge.py`` and
``bench/compact.py`` share.

* :func:`build_finished`: the database to clean up, one finished session of the
  simulator's firehose, built by :func:`recorder.simulator.database.build`;
* :func:`observe`: a recorder on a copy of it records a fresh simulator's firehose,
  polled read-only, and (unless it is the baseline) ``recorder cleanup run`` asks it
  for the action once enough of the firehose is committed;
* :func:`verify_firehose`: the zero-loss check of the new firehose's rows.

The process plumbing is ``bench/harness.py``'s and ``bench/ingest.py``'s.
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from harness import (
    BenchError,
    Child,
    Deadline,
    cpu_seconds,
    poll_row,
    recorder_config,
    ro_connect,
)
from ingest import NO_PROXY, FirehoseRows, LossReport, start_simulator, vm_hwm_kib
from samples import Sample

# What the benchmarks' recorder configuration leaves out: the request poll, and the
# policy, named "bench-<action>", which matches the finished session only.
CLEANUP_CONFIG = """
[cleanup]
poll = "0.2s"

[[cleanup.policies]]
name = "bench-{action}"
schedule = "every 1h"
action = "{action}"
when = {{ status = ["completed"] }}
"""


def write_config(workdir: Path, port: int, db: Path, action: str) -> Path:
    config = workdir / "config.toml"
    cleanup = CLEANUP_CONFIG.format(action=action)
    config.write_text(recorder_config(port, f"sqlite:///{db}") + NO_PROXY + cleanup)
    return config


def file_sizes(db: Path) -> dict[str, int]:
    wal = db.with_name(db.name + "-wal")
    return {"main": db.stat().st_size, "wal": wal.stat().st_size if wal.exists() else 0}


# --- the database to clean up --------------------------------------------------------


@dataclass
class Built:
    path: Path
    session_id: str
    session_frames: int
    seconds: float
    auto_vacuum: int
    bytes: int


def build_finished(chunks: int, root: Path) -> Built:
    """One session of ``chunks`` firehose frames (the simulator's, on the recorder's
    link), then ``stream_end`` and its ``completed`` status: what a cleanup policy for
    finished sessions matches. Built along the recorder's write path, into a file the
    recorder's migrations create (``PRAGMA auto_vacuum`` is read back and printed)."""
    from recorder.simulator.database import build, firehose

    db = Path(tempfile.mkdtemp(prefix="build-", dir=root)) / "big.db"
    built = build(db, [firehose(chunks)])
    (sid,) = built.sessions
    with closing(ro_connect(db)) as con:
        sql = "select status, frame_count, (select count(*) from frames where session_id = ?)"
        status, count, rows = con.execute(
            sql + " from sessions where id = ?", (sid, sid)
        ).fetchone()
        auto_vacuum = int(con.execute("pragma auto_vacuum").fetchone()[0])
    if status != "completed" or count != rows or rows != chunks + 2:
        raise BenchError(
            f"built session {sid}: status {status!r}, frame_count {count}, {rows} rows;"
            f" expected completed and {chunks + 2} (the chunks, stream_end, the status)"
        )
    return Built(db, sid, rows, built.seconds, auto_vacuum, db.stat().st_size)


# --- a run -------------------------------------------------------------------------------


@dataclass
class Run:
    """What :func:`observe` is to watch: the recorder on ``db`` (a copy of the built
    file, whose last frame and connection are ``base``) records ``frames`` of a new
    firehose; ``ask_at`` committed rows in, ``recorder cleanup run`` asks for the
    policy of ``action`` (never, if None: the baseline)."""

    kind: str
    built: Built
    db: Path
    base: tuple[int, int]
    frames: int
    action: str
    ask_at: int | None
    deadline: Deadline
    poll: float
    stall: float


@dataclass
class Observed:
    """A run as polled: the samples, the recorder's CPU seconds from the first firehose
    row, its database process's peak RSS (KiB, just before the stop), exit code, log;
    the cleanup command's start and end (wall clock), and the file right after it."""

    samples: list[Sample]
    cpu_s: float = 0.0
    db_peak_kib: int = 0
    exit_code: int | None = None
    log: str = ""
    command: tuple[float, float] | None = None
    right_after: dict[str, int] = field(default_factory=dict)
    free_pages_right_after: int = 0
    logical_bytes_right_after: int = 0


SAMPLE_SQL = (
    "select (select max(id) from frames), (select frame_count from sessions where id = ?),"
    " (select count(*) from frames where type = 'stream_end' and id > ?)"
)


def observe(run: Run, workdir: Path) -> Observed:
    """A recorder on ``run.db`` until the firehose is committed and the cleanup done."""
    sim, port = start_simulator(run.frames, workdir, run.deadline)
    rec: Child | None = None
    watch = _Watch(run, workdir)
    try:
        rec = Child(
            "recorder",
            [sys.executable, "-m", "recorder", "run", "--config", str(watch.config(port))],
            workdir,
        )
        cpu0 = watch.until_done(rec)
        seen = watch.seen
        seen.cpu_s = cpu_seconds(rec.pid) - cpu0
        # The database process: the service's only grandchild (service -> classifier -> it).
        found = [g.pid for c in psutil.Process(rec.pid).children() for g in c.children()]
        if len(found) != 1:
            raise BenchError(f"expected one grandchild of the recorder, found {found}")
        seen.db_peak_kib = vm_hwm_kib(found[0])
        seen.exit_code = rec.terminate(min(90.0, max(run.deadline.left(), 1.0)))
        seen.log = rec.log()
        return seen
    finally:
        for child in (watch.cleanup, rec):
            if child is not None:
                child.kill()
        sim.stop()


class _Watch:
    """The poll loop of :func:`observe`, and the cleanup command it starts and waits for."""

    def __init__(self, run: Run, workdir: Path) -> None:
        self.run, self.workdir = run, workdir
        self.seen = Observed([])
        self.cleanup: Child | None = None
        self.started = 0.0
        self._config = workdir / "config.toml"

    def config(self, port: int) -> Path:
        self._config = write_config(self.workdir, port, self.run.db, self.run.action)
        return self._config

    def until_done(self, rec: Child) -> float:
        """Poll until the firehose's stream_end is committed and the cleanup command
        (if asked for) has returned; the recorder's CPU seconds at the first row."""
        run, samples = self.run, self.seen.samples
        cpu0: float | None = None
        last_top, since, done = -1, time.monotonic(), False
        while True:
            row = poll_row(run.db, SAMPLE_SQL, (run.built.session_id, run.base[0]))
            if row is not None:
                top, done = int(row[0] or 0), bool(row[2])
                samples.append(
                    Sample(time.time(), top - run.base[0], -1 if row[1] is None else int(row[1]))
                )
                if top != last_top:
                    last_top, since = top, time.monotonic()
                if top > run.base[0] and cpu0 is None:
                    cpu0 = cpu_seconds(rec.pid)
                self.ask(top - run.base[0])
            if self.cleanup is not None and not self.cleanup.alive():
                self.returned()
            if done and self.cleanup is None and (run.ask_at is None or self.seen.command):
                return cpu0 or 0.0
            run.deadline.check(f"the {run.kind} run")
            if not rec.alive():
                raise BenchError(f"recorder exited early:\n{rec.log()[-2000:]}")
            if not done and time.monotonic() - since > run.stall:
                raise BenchError(f"no frame committed for {run.stall:.0f} s ({run.kind} run)")
            time.sleep(run.poll)

    def ask(self, committed: int) -> None:
        run = self.run
        if run.ask_at is None or committed < run.ask_at or self.started:
            return
        args = [sys.executable, "-m", "recorder", "cleanup", "run", "--policy"]
        args += [f"bench-{run.action}", "--config", str(self._config), "--format", "json"]
        self.cleanup = Child("cleanup", args, self.workdir, pipe_stdout=True)
        self.started = time.time()

    def returned(self) -> None:
        """The cleanup command returned: the file's size and pages right then."""
        assert self.cleanup is not None
        seen, db = self.seen, self.run.db
        seen.command = (self.started, time.time())
        seen.right_after = file_sizes(db)
        pages = poll_row(
            db,
            "select freelist_count, page_count * page_size"
            " from pragma_freelist_count, pragma_page_count, pragma_page_size",
        )
        if pages:
            seen.free_pages_right_after, seen.logical_bytes_right_after = map(int, pages)
        out = self.cleanup.proc.stdout.read() if self.cleanup.proc.stdout else b""
        code, log = self.cleanup.proc.returncode, self.cleanup.log()
        self.cleanup.kill()
        self.cleanup = None
        if code != 0:
            raise BenchError(f"`recorder cleanup run` exited {code}:\n{log[-2000:]}")
        (self.workdir / "cleanup.out").write_bytes(out)


# --- the checks ------------------------------------------------------------------------


def verify_firehose(run: Run) -> LossReport:
    """Every new firehose frame exactly once, in a gap-free seq, byte-identical to the
    wire, on the one connection opened since the copy was made."""
    base_id, base_cid = run.base
    check = FirehoseRows(run.frames)
    problems = check.report.problems
    with closing(ro_connect(run.db)) as con:
        links = con.execute(
            "select id, frame_count from connections where id > ? order by id", (base_cid,)
        ).fetchall()
        if len(links) != 1:
            problems.append(f"{len(links)} new connections, expected 1 (the link reconnected?)")
        if not links:
            check.report.ok = False
            return check.report
        cid, frame_count = links[0]
        rows = con.execute(
            "select connection_id, seq, type, opcode, size, payload, payload_bytes from frames"
            " where id > ? order by id",
            (base_id,),
        )
        for connection_id, *row in rows:
            if connection_id != cid:
                problems.append(f"a row of connection {connection_id} above the copy's last row")
                continue
            check.row(*row)
    return check.finish(frame_count)
