"""The proxy benchmark's driver: its processes, and one measurement at a time through them.

:class:`Bench` starts the peer (``proxy_peer.py``), the recorder with ``daemon.url`` at
the peer, ``proxy.listen`` on a free port and a fresh SQLite file (``recording.py``),
and the client (``proxy_client.py``). :meth:`Bench.measure` hands the client one
:class:`Point`, direct to the peer or through the proxy, reads the CPU time of the three
around it, and for a proxied throughput run watches the database until every row of
the run is committed (the "recorded" rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from databases import SqliteDatabase
from harness import (
    BenchError,
    Child,
    Deadline,
    cpu_seconds,
    free_port,
    recorder_config,
    wait_for_log,
)
from proxy_peer import LISTENING
from proxy_rows import TOP_SQL, find_connection
from recording import Recorder

HERE = Path(__file__).resolve().parent

PROXY_CONFIG = """
[proxy]
listen = "127.0.0.1:{proxy}"
"""


@dataclass(frozen=True)
class Point:
    kind: str  # "latency" or "throughput"
    dir: str  # "down" (peer -> client) or "up"
    rate: int  # frames/s; 0: as fast as possible
    n: int


@dataclass
class Bench:
    """The peer, the recorder and the client of a run, and the measurements so far."""

    root: Path
    deadline: Deadline
    db: SqliteDatabase = field(init=False)
    peer: Child | None = None
    recorder: Recorder | None = None
    client: Child | None = None
    peer_port: int = 0
    proxy_port: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    next_run: int = 0
    _reader: asyncio.StreamReader | None = None
    _transport: asyncio.BaseTransport | None = None

    def __post_init__(self) -> None:
        self.db = SqliteDatabase(self.root / "bench.db")

    def start(self) -> None:
        py = sys.executable
        peer = [py, str(HERE / "proxy_peer.py")]
        self.peer = Child("peer", peer, self.root, die_with_parent=True)
        budget = max(self.deadline.left(), 0.1)
        self.peer_port = int(wait_for_log(self.peer, LISTENING, budget).group(1))
        self.proxy_port = free_port()
        config = recorder_config(self.peer_port, self.db.url)
        config += PROXY_CONFIG.format(proxy=self.proxy_port)
        self.recorder = Recorder(self.root, config, die_with_parent=True)
        self.recorder.wait_started(self.deadline)
        self.client = Child(
            "client",
            [py, str(HERE / "proxy_client.py")],
            self.root,
            pipe_stdin=True,
            pipe_stdout=True,
            die_with_parent=True,
        )

    def stop(self) -> dict[str, Any]:
        """Stop the client, then the recorder (SIGTERM: it must drain and exit 0)."""
        assert self.recorder is not None and self.client is not None
        self.close_stdout()
        self.client.kill()
        return asdict(self.recorder.stop(min(90.0, max(self.deadline.left(), 5.0))))

    def close(self) -> None:
        recorder = self.recorder.child if self.recorder is not None else None
        for child in (self.client, recorder, self.peer):
            if child is not None:
                child.stop()

    async def measure(self, point: Point, via: str, label: str) -> dict[str, Any]:
        """One measurement: its result as the client reported it, with its CPU-seconds,
        its wall time and, proxied throughput, the moment it was all committed."""
        self.deadline.check(f"starting {label}")
        self.next_run += 1
        run = self.next_run
        port = self.peer_port if via == "direct" else self.proxy_port
        expected = point.n / (point.rate or 2000)  # assume at least 2 000 frames/s flat out
        timeout = min(max(self.deadline.left(), 1.0), expected + 60)
        spec = {
            "base": f"ws://127.0.0.1:{port}",
            "dir": point.dir,
            "rate": point.rate,
            "n": point.n,
            "run": run,
            "timeout": timeout,
        }
        cpu0 = self.cpu()
        wall0 = time.monotonic()
        watcher = None
        if via == "proxy" and point.kind == "throughput":
            # down: bench_go, n chunks, bench_done, bench_result; up: n, bench_done, bench_result
            total = point.n + (3 if point.dir == "down" else 2)
            watcher = asyncio.create_task(self.watch_commits(run, total, timeout + 30))
        try:
            line = await self.ask_client(spec, label, timeout)
            wall = time.monotonic() - wall0
            result = self.answer(line, label)
        except BenchError:
            if watcher is not None:
                watcher.cancel()
            raise
        committed_ns = None
        if watcher is not None:
            # Every row is committed within a commit interval or so of the last frame.
            with contextlib.suppress(TimeoutError):
                committed_ns = await asyncio.wait_for(watcher, 30)
        cpu = {k: v - cpu0[k] for k, v in self.cpu().items()}
        result |= {"run": run, "label": label, "kind": point.kind, "dir": point.dir}
        result |= {"rate": point.rate, "n": point.n, "via": via, "wall_s": wall, "cpu_s": cpu}
        rx = result["receiver"]
        if committed_ns is not None and "first_ns" in rx:
            result["recorded_fps"] = point.n / ((committed_ns - rx["first_ns"]) / 1e9)
            result["commit_lag_ms"] = (committed_ns - rx["last_ns"]) / 1e6
        self.runs.append(result)
        return result

    def cpu(self) -> dict[str, float]:
        """CPU-seconds so far of the peer, the client, the recorder's processes, and the
        recorder's main process alone."""
        assert self.peer is not None and self.client is not None and self.recorder is not None
        return {
            "peer": cpu_seconds(self.peer.pid),
            "client": cpu_seconds(self.client.pid),
            "recorder": self.recorder.cpu(),
            "recorder_main": cpu_seconds(self.recorder.pid, children=False),
        }

    async def ask_client(self, spec: dict[str, Any], label: str, limit: float) -> bytes:
        """Hand the client one spec; its line of JSON in answer, within ``limit`` + 10 s."""
        assert self.client is not None and self.client.proc.stdin is not None
        self.client.proc.stdin.write((json.dumps(spec) + "\n").encode())
        self.client.proc.stdin.flush()
        try:
            async with asyncio.timeout(limit + 10):
                line = await (await self.client_stdout()).readline()
        except TimeoutError:
            raise BenchError(f"{label}: the client did not answer in {limit + 10:.0f} s") from None
        if not line:
            raise BenchError(f"{label}: the client died:\n{self.client.log()[-2000:]}")
        return line

    def answer(self, line: bytes, label: str) -> dict[str, Any]:
        assert self.client is not None
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise BenchError(f"{label}: {result['error']}\n{self.client.log()[-2000:]}")
        return result

    async def client_stdout(self) -> asyncio.StreamReader:
        """The client's stdout as a stream, so waiting for it never blocks the loop."""
        if self._reader is None:
            assert self.client is not None and self.client.proc.stdout is not None
            reader = asyncio.StreamReader(limit=1 << 24)
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), self.client.proc.stdout
            )
            self._reader = reader
        return self._reader

    def close_stdout(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def watch_commits(self, run: int, total: int, limit: float) -> int | None:
        """Monotonic ns at which the run's connection has ``total`` frames committed."""
        until = time.monotonic() + limit
        cid: int | None = None
        while time.monotonic() < until:
            await asyncio.sleep(0.05)
            if cid is None:
                cid = find_connection(self.db, run)
                continue
            top = self.db.scalar(TOP_SQL, cid)
            if top is not None and top >= total:
                return time.monotonic_ns()
        return None
