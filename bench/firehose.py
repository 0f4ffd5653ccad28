"""The simulator's firehose (``recorder simulate --firehose N``: N ``stream_chunk`` frames
of about :data:`DEFAULT_SIZE` bytes, then one ``stream_end``, as fast as the client
reads), the bare client that is the baseline beside a recorder (:func:`run_ceiling`;
this file, run as ``python bench/firehose.py URL FRAMES``), and the zero-loss check of
what a recorder stored (:class:`FirehoseRows`)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import BenchError, Child, Deadline, wait_for_log

if TYPE_CHECKING:
    from databases import Database

DEFAULT_SIZE = 180  # the simulator's firehose_size default; the CLI has no option for it
CHUNK_PREFIX = b'{"type":"stream_chunk"'
END_PREFIX = b'{"type":"stream_end"'
LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")


def start_simulator(frames: int, workdir: Path, deadline: Deadline) -> tuple[Child, int]:
    args = [sys.executable, "-m", "recorder", "simulate", "--port", "0"]
    args += ["--firehose", str(frames), "--chunk-delay", "0"]
    sim = Child("simulator", args, workdir)
    try:
        return sim, int(wait_for_log(sim, LISTENING, deadline.left()).group(1))
    except BenchError:
        sim.kill()
        raise


async def bare_client(url: str, frames: int) -> dict[str, Any]:
    """Receive until stream_end, doing nothing with the frames (in its own process)."""
    from websockets.asyncio.client import connect

    chunks = 0
    first = end = 0.0
    async with connect(url, max_size=None, ping_interval=None) as ws:
        recv = ws.recv
        while True:
            data = await recv(decode=False)
            if data.startswith(CHUNK_PREFIX):
                if not chunks:
                    first = time.perf_counter()
                chunks += 1
            elif data.startswith(END_PREFIX):
                end = time.perf_counter()
                break
    return {"chunks": chunks, "seconds": end - first}


def run_ceiling(frames: int, root: Path, deadline: Deadline) -> dict[str, float]:
    """The baseline: frames/s of a bare client, first chunk to stream_end."""
    workdir = Path(tempfile.mkdtemp(prefix="ceiling-", dir=root))
    sim, port = start_simulator(frames, workdir, deadline)
    args = [sys.executable, str(Path(__file__).resolve()), f"ws://127.0.0.1:{port}", str(frames)]
    client = Child("client", args, workdir, pipe_stdout=True)
    try:
        out, _ = client.proc.communicate(timeout=max(deadline.left(), 1.0))
        if client.proc.returncode != 0:
            raise BenchError(f"bare client failed:\n{client.log()[-2000:]}")
    except subprocess.TimeoutExpired:
        raise BenchError("overall timeout while the bare client was receiving") from None
    finally:
        client.kill()
        sim.stop()
    result = json.loads(out)
    if result["chunks"] != frames:
        raise BenchError(f"bare client saw {result['chunks']} chunks, expected {frames}")
    return {"fps": frames / result["seconds"], "seconds": result["seconds"]}


@dataclass
class LossReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    chunk_rows: int = 0
    total_rows: int = 0


class FirehoseRows:
    """A firehose connection's rows, checked one at a time as they are read: a gap-free
    ``seq``, each index once, stored as text, byte-identical to the wire, ``size`` its
    length, one ``stream_end``; :meth:`finish` gives the :class:`LossReport`."""

    def __init__(self, frames: int) -> None:
        self.report = LossReport(ok=True)
        self.frames = frames
        self.seen = bytearray(frames)
        self.expected_seq = 1
        self.ends = 0
        self.template: tuple[str, str] | None = None

    def row(
        self, seq: int, type_: str | None, opcode: int, size: int, payload: str | None, raw: Any
    ) -> None:
        report, problems = self.report, self.report.problems
        report.total_rows += 1
        if seq != self.expected_seq and len(problems) < 20:
            problems.append(f"seq {seq} where {self.expected_seq} was expected")
        self.expected_seq = seq + 1
        self.ends += type_ == "stream_end"
        if type_ != "stream_chunk":
            return
        report.chunk_rows += 1
        if payload is None or raw is not None or opcode != 1:
            problems.append(f"seq {seq}: not stored as a text payload")
            return
        data = json.loads(payload)["data"]
        index = data["metadata"]["index"]
        if not 0 <= index < self.frames:
            problems.append(f"seq {seq}: index {index} out of range")
            return
        self.seen[index] += 1
        if self.template is None:  # what the simulator sends before and after the index
            from recorder.simulator import firehose_template

            self.template = firehose_template(data["sessionId"], DEFAULT_SIZE, self.frames)
        prefix, suffix = self.template
        if len(problems) < 20 and payload != f"{prefix}{index}{suffix}":
            problems.append(f"seq {seq}: payload of index {index} differs from the wire")
        if len(problems) < 20 and size != len(payload.encode()):
            problems.append(f"seq {seq}: size {size} is not the payload's length")

    def finish(self, frame_count: int) -> LossReport:
        """The checks over the whole connection; ``frame_count`` is its row's."""
        report, problems = self.report, self.report.problems
        if report.chunk_rows != self.frames:
            problems.append(f"{report.chunk_rows} stream_chunk rows, expected {self.frames}")
        missing, duplicated = self.seen.count(0), sum(1 for n in self.seen if n > 1)
        if missing or duplicated:
            problems.append(f"{missing} indexes missing, {duplicated} duplicated")
        if self.ends != 1:
            problems.append(f"{self.ends} stream_end rows, expected 1")
        if frame_count != report.total_rows:
            problems.append(f"connections.frame_count {frame_count} != {report.total_rows} rows")
        report.ok = not problems
        return report


def verify_firehose(db: Database, instance: str, frames: int) -> LossReport:
    """After the recorder stopped: its one link connection, checked row by row."""
    check = FirehoseRows(frames)
    links = list(db.rows("select id, frame_count from connections where instance = ?", instance))
    if len(links) != 1:
        check.report.problems.append(f"{len(links)} connections, expected 1 (reconnected?)")
        check.report.ok = False
        return check.report
    cid, frame_count = links[0]
    sql = "select seq, type, opcode, size, payload, payload_bytes from frames"
    for row in db.rows(sql + " where connection_id = ? order by seq", cid):
        check.row(*row)
    return check.finish(frame_count)


def print_run_problems(r: dict[str, Any]) -> None:
    """Under a run's line: what its loss check found and what the recorder logged."""
    for problem in r["loss"]["problems"][:10]:
        print(f"      loss: {problem}")
    for warning in r["warnings"][:5]:
        print(f"      log: {warning}")


if __name__ == "__main__":
    print(json.dumps(asyncio.run(bare_client(sys.argv[1], int(sys.argv[2])))))
