"""Ingest benchmark: how fast does the recorder commit a firehose, next to a bare client?

Method (every process is separate, everything is on loopback):

1. A fresh simulated daemon per measurement:
   ``python -m recorder simulate --port 0 --firehose N --chunk-delay 0``. Right after
   its ``health_check_response`` it sends each new client N ``stream_chunk`` frames
   (``data.metadata.index`` 0..N-1, about 180 bytes each) and one ``stream_end``, as
   fast as the client reads them. The CLI turns off the simulator's in-memory journal,
   so the simulator does not keep the frames it sent; each measurement still gets a
   fresh simulator, so that no run inherits another's state.
2. Ceiling: a bare ``websockets`` client (``recv(decode=False)``, ``max_size=None``, in
   its own process) receives until ``stream_end`` and does nothing with the frames.
   Rate = N / (arrival of ``stream_end`` - arrival of the first ``stream_chunk``).
3. Recorder: ``python -m recorder run --config <tmp>/config.toml`` writing to a fresh
   SQLite file. The benchmark polls the file read-only (stdlib ``sqlite3``) every
   ``--poll`` seconds until the ``stream_end`` row is committed; the writer commits
   frames in order, so that row means every chunk before it is committed too.
   Rate = N / (wall clock when the poll first sees ``stream_end`` - ``received_at_us``
   of the first ``stream_chunk`` row). The poll adds at most one interval (50 ms) to
   the measured time, and the time includes the writer's final flush: the queue drains,
   and the last partial batch is committed once no frame has arrived for 10 ms
   (``BURST_END_QUIET`` in ``recorder/pipeline/batching.py``).
   Also reported: the receive rate (first to last ``received_at_us``), the commit lag
   after the last frame, and the steady commit rate between 10 % and 90 % of the frames
   (from the poll samples; no start-up, no final flush).
4. Zero loss: after the recorder stopped, the connection's rows are read back: exactly
   one link connection, ``seq`` 1..M with no gap or duplicate, every index 0..N-1
   exactly once (``payload`` parsed as JSON), each payload byte-identical to what the
   simulator sends (regenerated with :func:`recorder.simulator.firehose_template`, which
   is itself checked against frames the bare client captured off the wire), opcode text,
   ``size`` equal to the payload's length, and exactly one ``stream_end``.
5. Peak RSS: ``VmHWM`` of the recorder's processes (the service, the classifier and the
   database process; the short-lived migration process has exited by then), summed,
   read right before SIGTERM; the recorder must then exit 0 and log ``recorder stopped``.

Measurements alternate (ceiling, recorder, ceiling, recorder, ...) ``--repeat`` times and
the medians are reported, because small shared machines are noisy. CPU seconds of each
process during the measured window are reported too, to show which process is the
bottleneck (a process near 1.0 CPU-s per wall-second is saturated).

Usage::

    python bench/ingest.py                      # 200 000 frames, 2 repeats
    python bench/ingest.py --frames 1000000 --json

Exits 1 if any frame was lost, duplicated or altered, 2 on a benchmark failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    BenchError,
    Child,
    Deadline,
    cpu_seconds,
    log_outcome,
    ro_connect,
    scratch_dir,
    targets_line,
    wait_for_log,
    yes,
)

TARGET_RATIO = 0.5
TARGET_RSS_MB = 150.0
TARGET_RSS_FRAMES = 1_000_000
DEFAULT_FRAMES = 200_000
DEFAULT_SIZE = 180  # the simulator's firehose_size default; the CLI has no option for it
CHUNK_PREFIX = b'{"type":"stream_chunk"'
END_PREFIX = b'{"type":"stream_end"'
LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")


# --- processes ---------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """The pid and all its descendants (the recorder: service -> classifier -> database)."""
    import psutil

    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


def start_simulator(frames: int, workdir: Path, deadline: Deadline) -> tuple[Child, int]:
    args = [sys.executable, "-m", "recorder", "simulate", "--port", "0"]
    args += ["--firehose", str(frames), "--chunk-delay", "0"]
    sim = Child("simulator", args, workdir)
    try:
        m = wait_for_log(sim, LISTENING, deadline.left())
    except BenchError:
        sim.kill()
        raise
    return sim, int(m.group(1))


# --- the ceiling: a bare client ----------------------------------------------------------


async def bare_client(url: str, frames: int) -> dict[str, Any]:
    """Receive until stream_end, doing nothing with the frames (runs in its own process)."""
    from websockets.asyncio.client import connect

    wanted = {0, frames // 2, frames - 1}
    samples: dict[int, str] = {}
    chunks = other = nbytes = 0
    first = end = 0.0
    cpu0 = time.process_time()
    async with connect(url, max_size=None, ping_interval=None) as ws:
        recv = ws.recv
        while True:
            data = await recv(decode=False)
            if data.startswith(CHUNK_PREFIX):
                if not chunks:
                    first = time.perf_counter()
                    cpu0 = time.process_time()
                if chunks in wanted:
                    samples[chunks] = bytes(data).decode()
                chunks += 1
                nbytes += len(data)
            elif data.startswith(END_PREFIX):
                end = time.perf_counter()
                break
            else:
                other += 1
    return {
        "chunks": chunks,
        "other": other,
        "bytes": nbytes,
        "seconds": end - first,
        "cpu_seconds": time.process_time() - cpu0,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "samples": samples,
    }


@dataclass
class CeilingRun:
    frames: int
    seconds: float
    fps: float
    avg_frame_bytes: float
    client_cpu_s: float
    simulator_cpu_s: float
    client_peak_rss_mb: float


def run_ceiling(frames: int, root: Path, deadline: Deadline) -> CeilingRun:
    workdir = Path(tempfile.mkdtemp(prefix="ceiling-", dir=root))
    sim, port = start_simulator(frames, workdir, deadline)
    client: Child | None = None
    try:
        sim_cpu0 = cpu_seconds(sim.pid, children=False)
        args = [sys.executable, str(Path(__file__).resolve()), "--frames", str(frames)]
        args += ["--bare-client", f"ws://127.0.0.1:{port}"]
        client = Child("client", args, workdir, pipe_stdout=True)
        assert client.proc.stdout is not None
        try:
            out, _ = client.proc.communicate(timeout=max(deadline.left(), 1.0))
        except subprocess.TimeoutExpired:
            raise BenchError("overall timeout while the bare client was receiving") from None
        sim_cpu = cpu_seconds(sim.pid, children=False) - sim_cpu0
        if client.proc.returncode != 0:
            raise BenchError(f"bare client failed:\n{client.log()[-2000:]}")
        result = json.loads(out)
    finally:
        if client is not None:
            client.kill()
        sim.terminate(5)
        sim.kill()
    if result["chunks"] != frames:
        raise BenchError(f"bare client saw {result['chunks']} chunks, expected {frames}")
    check_template_samples(result["samples"], frames)
    seconds = result["seconds"]
    return CeilingRun(
        frames=frames,
        seconds=seconds,
        fps=frames / seconds,
        avg_frame_bytes=result["bytes"] / frames,
        client_cpu_s=result["cpu_seconds"],
        simulator_cpu_s=sim_cpu,
        client_peak_rss_mb=result["peak_rss_kib"] / 1024,
    )


def check_template_samples(samples: dict[str, str], frames: int) -> None:
    """The frames off the wire are what firehose_template regenerates: it is deterministic."""
    from recorder.simulator import firehose_template

    for position, text in samples.items():
        data = json.loads(text)["data"]
        prefix, suffix = firehose_template(data["sessionId"], DEFAULT_SIZE, frames)
        index = data["metadata"]["index"]
        if int(position) != index or text != f"{prefix}{index}{suffix}":
            raise BenchError(
                f"firehose_template does not reproduce frame {position} off the wire; "
                "the byte-exact check would be wrong"
            )


# --- the recorder ------------------------------------------------------------------------


CONFIG = """\
[daemon]
url = "ws://127.0.0.1:{port}"

[heartbeat]
interval = 3600.0
timeout = 600.0

[storage]
url = "sqlite:///{db}"
shutdown_timeout = 60.0

[log]
level = "info"
format = "json"
"""


@dataclass
class LossReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    chunk_rows: int = 0
    total_rows: int = 0
    avg_frame_bytes: float = 0.0
    in_order: bool = True


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


def poll_scalar(db: Path, sql: str) -> Any:
    """One short read transaction; None while the file or the tables do not exist yet."""
    if not db.exists():
        return None
    try:
        con = ro_connect(db)
    except sqlite3.OperationalError:
        return None
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


def run_recorder(
    frames: int, root: Path, deadline: Deadline, poll: float, stall: float
) -> RecorderRun:
    workdir = Path(tempfile.mkdtemp(prefix="recorder-", dir=root))
    db = workdir / "bench.db"
    sim, port = start_simulator(frames, workdir, deadline)
    rec: Child | None = None
    try:
        config = workdir / "config.toml"
        config.write_text(CONFIG.format(port=port, db=db))
        args = [sys.executable, "-m", "recorder", "run", "--config", str(config)]
        rec = Child("recorder", args, workdir)

        # Connected (migrations done, firehose starting): start the CPU clocks.
        while not poll_scalar(db, "select count(*) from connections"):
            deadline.check("waiting for the recorder to connect")
            if not rec.alive():
                raise BenchError(f"recorder exited early:\n{rec.log()[-2000:]}")
            time.sleep(poll)
        # The recorder's whole process tree, as at the end of the window.
        rec_cpu0 = sum(cpu_seconds(p, children=False) for p in process_tree(rec.pid))
        sim_cpu0 = cpu_seconds(sim.pid, children=False)

        # Committed: the stream_end row is visible.
        last_id, last_progress = -1, time.monotonic()
        progress: list[tuple[float, int]] = []
        while True:
            if poll_scalar(db, "select count(*) from frames where type = 'stream_end'"):
                done = time.time()
                break
            deadline.check("waiting for the recorder to commit")
            if not rec.alive():
                raise BenchError(f"recorder exited early:\n{rec.log()[-2000:]}")
            top = poll_scalar(db, "select max(id) from frames") or 0
            progress.append((time.time(), top))
            if top != last_id:
                last_id, last_progress = top, time.monotonic()
            elif time.monotonic() - last_progress > stall:
                raise BenchError(f"no frame committed for {stall:.0f} s (stuck at row {top})")
            time.sleep(poll)
        # The recorder is a process tree: service -> classifier -> database.
        pids = process_tree(rec.pid)
        rec_cpu = sum(cpu_seconds(p, children=False) for p in pids) - rec_cpu0
        sim_cpu = cpu_seconds(sim.pid, children=False) - sim_cpu0
        # Summed peaks: an upper bound on the tree's peak (they need not coincide).
        peak_kib = sum(vm_hwm_kib(p) for p in pids)
        exit_code = rec.terminate(min(90.0, max(deadline.left(), 1.0)))
        log = rec.log()
    finally:
        if rec is not None:
            rec.kill()
        sim.terminate(5)
        sim.kill()

    stopped, warnings = log_outcome(log)
    con = ro_connect(db)
    try:
        first_us, last_us = con.execute(
            "select min(received_at_us), max(received_at_us) from frames"
            " where type in ('stream_chunk', 'stream_end')"
        ).fetchone()
        loss = verify(con, frames)
    finally:
        con.close()
    first = first_us / 1e6
    seconds = done - first
    return RecorderRun(
        frames=frames,
        seconds=seconds,
        fps=frames / seconds,
        receive_fps=frames / max((last_us - first_us) / 1e6, 1e-9),
        steady_fps=steady_rate(progress, frames),
        commit_lag_s=done - last_us / 1e6,
        poll_interval_s=poll,
        peak_rss_mb=peak_kib / 1024,
        recorder_cpu_s=rec_cpu,
        simulator_cpu_s=sim_cpu,
        exit_code=exit_code,
        logged_stopped=stopped,
        warnings=warnings,
        loss=loss,
    )


def steady_rate(progress: list[tuple[float, int]], frames: int) -> float:
    """Committed rows/s between 10 % and 90 % of the frames: no start-up, no final flush."""
    lo = next((p for p in progress if p[1] >= frames // 10), None)
    hi = next((p for p in progress if p[1] >= frames * 9 // 10), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return float("nan")
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


def verify(con: sqlite3.Connection, frames: int) -> LossReport:
    """Every firehose frame exactly once, in a gap-free seq, byte-identical to the wire."""
    from recorder.simulator import firehose_template

    report = LossReport(ok=True)
    problems = report.problems
    links = con.execute("select id, frame_count from connections order by id").fetchall()
    if len(links) != 1:
        problems.append(f"{len(links)} connections, expected 1 (the link reconnected?)")
    if not links:
        report.ok = False
        return report
    cid, frame_count = links[0]
    seen = bytearray(frames)
    expected_seq = 1
    prefix = suffix = ""
    prev_index = -1
    ends = total_bytes = 0
    rows = con.execute(
        "select seq, type, opcode, size, payload, payload_bytes from frames"
        " where connection_id = ? order by seq",
        (cid,),
    )
    for seq, type_, opcode, size, payload, payload_bytes in rows:
        report.total_rows += 1
        if seq != expected_seq and len(problems) < 20:
            problems.append(f"seq {seq} where {expected_seq} was expected")
        expected_seq = seq + 1
        if type_ == "stream_end":
            ends += 1
        if type_ != "stream_chunk":
            continue
        report.chunk_rows += 1
        if payload is None or payload_bytes is not None or opcode != 1:
            problems.append(f"seq {seq}: not stored as a text payload")
            continue
        data = json.loads(payload)["data"]
        index = data["metadata"]["index"]
        if not prefix:
            prefix, suffix = firehose_template(data["sessionId"], DEFAULT_SIZE, frames)
        encoded = payload.encode()
        total_bytes += len(encoded)
        if not 0 <= index < frames:
            problems.append(f"seq {seq}: index {index} out of range")
            continue
        seen[index] += 1
        if encoded != f"{prefix}{index}{suffix}".encode() and len(problems) < 20:
            problems.append(f"seq {seq}: payload of index {index} differs from the wire")
        if size != len(encoded) and len(problems) < 20:
            problems.append(f"seq {seq}: size {size} != {len(encoded)} payload bytes")
        if index != prev_index + 1:
            report.in_order = False
        prev_index = index
    if report.chunk_rows != frames:
        problems.append(f"{report.chunk_rows} stream_chunk rows, expected {frames}")
    missing = seen.count(0)
    duplicated = sum(1 for n in seen if n > 1)
    if missing or duplicated:
        problems.append(f"{missing} indexes missing, {duplicated} duplicated")
    if ends != 1:
        problems.append(f"{ends} stream_end rows, expected 1")
    if frame_count != report.total_rows:
        problems.append(f"connections.frame_count {frame_count} != {report.total_rows} rows")
    report.avg_frame_bytes = total_bytes / max(report.chunk_rows, 1)
    report.ok = not problems
    return report


# --- the report --------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(
    frames: int, ceilings: list[CeilingRun], recorders: list[RecorderRun]
) -> dict[str, Any]:
    ceiling = median([c.fps for c in ceilings])
    recorder = median([r.fps for r in recorders])
    peak = max(r.peak_rss_mb for r in recorders)
    zero_loss = all(r.loss.ok for r in recorders)
    clean_stop = all(r.exit_code == 0 and r.logged_stopped for r in recorders)
    ratio = recorder / ceiling
    targets: dict[str, Any] = {
        "ratio_ge_0.5": ratio >= TARGET_RATIO,
        "zero_loss": zero_loss,
        "clean_stop": clean_stop,
    }
    if frames >= TARGET_RSS_FRAMES:
        targets["peak_rss_lt_150mb"] = peak < TARGET_RSS_MB
    return {
        "frames": frames,
        "repeat": len(recorders),
        "ceiling_fps": ceiling,
        "recorder_fps": recorder,
        "ratio": ratio,
        "zero_loss": zero_loss,
        "recorder_peak_rss_mb": peak,
        "avg_frame_bytes": median([c.avg_frame_bytes for c in ceilings]),
        "recorder_receive_fps": median([r.receive_fps for r in recorders]),
        "recorder_steady_fps": median([r.steady_fps for r in recorders]),
        "recorder_commit_lag_s": median([r.commit_lag_s for r in recorders]),
        "targets": targets,
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "ceiling_runs": [asdict(c) for c in ceilings],
        "recorder_runs": [asdict(r) for r in recorders],
    }


def print_table(s: dict[str, Any]) -> None:
    rows = [
        ("frames", f"{s['frames']:,}"),
        ("avg frame bytes", f"{s['avg_frame_bytes']:.1f}"),
        ("ceiling frames/s (bare client)", f"{s['ceiling_fps']:,.0f}"),
        ("recorder frames/s (committed)", f"{s['recorder_fps']:,.0f}"),
        ("ratio recorder/ceiling", f"{s['ratio']:.2f}  (target >= {TARGET_RATIO})"),
        ("zero loss", yes(s["zero_loss"])),
        ("recorder peak RSS MB", f"{s['recorder_peak_rss_mb']:.1f}  (target < {TARGET_RSS_MB:g})"),
        ("recorder frames/s (received)", f"{s['recorder_receive_fps']:,.0f}"),
        ("recorder frames/s (10-90% steady)", f"{s['recorder_steady_fps']:,.0f}"),
        ("commit lag after last frame s", f"{s['recorder_commit_lag_s']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"ingest benchmark ({s['repeat']} run(s) each, medians)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("  runs:")
    for c in s["ceiling_runs"]:
        print(
            f"    ceiling   {c['fps']:>9,.0f} f/s  {c['seconds']:6.2f} s"
            f"  cpu client {c['client_cpu_s']:.1f} s, simulator {c['simulator_cpu_s']:.1f} s"
        )
    for r in s["recorder_runs"]:
        print(
            f"    recorder  {r['fps']:>9,.0f} f/s  {r['seconds']:6.2f} s"
            f"  cpu recorder {r['recorder_cpu_s']:.1f} s, simulator {r['simulator_cpu_s']:.1f} s"
            f"  rss {r['peak_rss_mb']:.0f} MB  exit {r['exit_code']}"
            f"  loss-check {'ok' if r['loss']['ok'] else 'FAILED'}"
        )
        for problem in r["loss"]["problems"][:10]:
            print(f"      loss: {problem}")
        for warning in r["warnings"][:5]:
            print(f"      log: {warning}")
    print(targets_line(s["targets"]))


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="firehose frames per run")
    p.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help="frame size; the simulator CLI only sends its default (180)",
    )
    p.add_argument("--repeat", type=int, default=2, help="measurements of each kind (median)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--poll", type=float, default=0.05, help="database poll interval, seconds")
    p.add_argument(
        "--stall", type=float, default=60.0, help="fail after this long without a commit"
    )
    p.add_argument("--timeout", type=float, default=0.0, help="overall limit, s (0: from --frames)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--bare-client", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.frames < 1 or args.repeat < 1 or args.poll <= 0:
        p.error("--frames and --repeat must be at least 1, --poll positive")
    if args.size != DEFAULT_SIZE:
        p.error(f"`recorder simulate` has no frame-size option; only --size {DEFAULT_SIZE} works")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_client:
        print(json.dumps(asyncio.run(bare_client(args.bare_client, args.frames))))
        return 0
    # Generous: 20 s of start-up per measurement, and at least 2 000 frames/s.
    seconds = args.timeout or 2 * args.repeat * (20 + args.frames / 2000)
    deadline = Deadline(seconds)
    # SIGTERM to the benchmark must still reach the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ceilings: list[CeilingRun] = []
    recorders: list[RecorderRun] = []
    with scratch_dir("bench-ingest-", args.keep) as root:
        try:
            for i in range(args.repeat):
                for kind in ("ceiling", "recorder"):
                    if not args.json:
                        print(f"run {i + 1}/{args.repeat}: {kind} ...", file=sys.stderr, flush=True)
                    if kind == "ceiling":
                        ceilings.append(run_ceiling(args.frames, root, deadline))
                    else:
                        recorders.append(
                            run_recorder(args.frames, root, deadline, args.poll, args.stall)
                        )
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        finally:
            for child in list(Child.live):
                child.kill()
    summary = summarize(args.frames, ceilings, recorders)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if summary["zero_loss"] else 1


if __name__ == "__main__":
    sys.exit(main())
