"""The simulator's firehose, and the bare client that sets the ceiling beside a recorder.

:func:`start_simulator` starts a fresh ``recorder simulate --firehose N --chunk-delay 0``:
right after its ``health_check_response`` it sends each new client N ``stream_chunk``
frames (``data.metadata.index`` 0..N-1, about :data:`DEFAULT_SIZE` bytes) and one
``stream_end``, as fast as the client reads. :func:`run_ceiling` measures the baseline
against one: a bare ``websockets`` client in its own process (this file, run as
``python bench/firehose.py URL FRAMES``) that receives until ``stream_end`` and does
nothing with the frames. It also checks, on three frames off the wire, that
:func:`recorder.simulator.firehose_template` rebuilds them byte for byte, which the
loss check of the recorder's rows (``bench/firehose_rows.py``) relies on.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BenchError, Child, Deadline, cpu_seconds, wait_for_log

DEFAULT_SIZE = 180  # the simulator's firehose_size default; the CLI has no option for it
CHUNK_PREFIX = b'{"type":"stream_chunk"'
END_PREFIX = b'{"type":"stream_end"'
LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")


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
        url = f"ws://127.0.0.1:{port}"
        args = [sys.executable, str(Path(__file__).resolve()), url, str(frames)]
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
        sim.stop()
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


if __name__ == "__main__":
    # The ceiling's client: one line of JSON with what it received.
    print(json.dumps(asyncio.run(bare_client(sys.argv[1], int(sys.argv[2])))))
