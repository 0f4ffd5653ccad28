"""Proxy benchmark: what does recording through the proxy cost a UI, next to talking direct?

Method (three separate processes besides this driver, everything on 127.0.0.1):

* **The peer** stands in for the daemon (``--peer``, a small ``websockets`` server in
  this file). It is used instead of ``recorder simulate`` because timing needs frames
  stamped at the moment they are sent, and the simulator has no hook for that. Frames
  from the peer are shaped like the protocol's ``stream_chunk``
  (``{"type":"stream_chunk","data":{"sessionId":...,"chunk":...,"metadata":{"type":"text",
  "index":i,"t":<monotonic_ns at send>}}}``), frames to it like a client's
  ``session_status`` request with the same ``index``/``t`` pair; both are padded to
  about 180 bytes. Only connections whose path starts with ``/bench`` take part (the
  proxy forwards the request path and query); the recorder's own passive link (path
  ``/``) is read and ignored.
* **The client** (``--client``, its own process) runs one measurement per line of JSON
  it reads on stdin, and prints one line of JSON per result.
* **The recorder**: ``python -m recorder run --config <tmp>/config.toml`` with
  ``daemon.url`` at the peer, ``proxy.listen`` on a free port and a fresh SQLite file.

Every measurement is one WebSocket connection. ``down`` is peer -> client (what a UI
receives), ``up`` is client -> peer. The sender stamps each frame with
``time.monotonic_ns()`` right before ``send``; the receiver takes
``time.monotonic_ns()`` right after ``recv``. CLOCK_MONOTONIC is one clock for every
process on a machine, so the difference is the one-way latency (sender's send call,
kernel, proxy if any, receiver's receive path). The receiver only appends
``(receive time, bytes)`` to a list while frames arrive and parses the stamps
afterwards; the client and the peer run with the garbage collector off during a
measurement, so the harness adds as little noise as it can. Compression is off
everywhere (the proxy never negotiates it, so a direct connection must not either).

* **Latency** at a paced rate (1 000 and 10 000 frames/s): the sender sends
  ``rate/1000`` frames every millisecond on a ``loop.time()`` schedule (catching up if
  it wakes late) for a few seconds; the first 10 % of the frames are dropped as warm-up.
  p50, p99 and max per direction, direct and proxied; "added" is proxied minus direct,
  taken per repeat (the two ran back to back) and then the median over repeats.
* **Throughput**: N frames (default 100 000) as fast as the sender can send them
  (``await send`` per frame, so TCP back-pressure paces it). frames/s = N / (receive time
  of the last frame - receive time of the first), measured by the receiver. For proxied
  runs the driver also watches the database (read-only, every 50 ms, ``max(seq)`` of the
  run's connection) and reports "recorded" frames/s = N / (moment every row of the run
  is committed - first receive): forwarding runs ahead of the database by at most the
  writer's queue (``storage.queue_max_frames``) plus the batches in flight to the writer
  processes (up to ``IN_FLIGHT`` = 3 batches of ``storage.batch_size``,
  ``recorder/pipeline/writer.py``), then back-pressure couples the two.
* **Every frame recorded**: after the recorder has been stopped with SIGTERM (it must
  exit 0 and log ``recorder stopped``), each proxied measurement's connection row
  (``connections.role = 'proxy'``, found by the ``run=`` id in its URL) is read back with
  stdlib ``sqlite3``, read-only: per direction, the number of rows equals the number of
  frames sent that way (data and control frames: ``bench_go``, ``bench_done``,
  ``bench_result``) and a SHA-256 over every payload in ``seq`` order equals the one
  the client computed over what it sent and received, so every payload is byte-identical,
  not just a sample. The peer hashes what it sent / received too, so the benchmark also
  checks that the proxy forwarded every data frame unchanged.

Around every measurement the driver reads the CPU time (``/proc``) of the peer, the
client and the recorder, the recorder including its child processes (the recorder's
classifier and database processes), and reports CPU-seconds and "cores busy" (all three
per wall-second), which shows whether the machine, rather than one process, was the
limit. The output names the recorder code it measured (SHA-256 over every
``recorder/**/*.py``, subpackages included) and says if that code changed during the run.

Direct and proxied measurements of a point run back to back (direct first), point after
point, ``--repeat`` times; medians are reported, because small shared machines are
noisy. Before measuring, one short direct and proxied run each way warms everything up
(those are verified in the database too, but not reported).

Usage::

    python bench/proxy.py               # about 60 s
    python bench/proxy.py --quick       # about 15 s
    python bench/proxy.py --json

Exits 0 when every frame was forwarded and recorded, 1 if one was lost or altered,
2 if the benchmark itself failed. Missing a latency or throughput target is reported,
not an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import hashlib
import json
import math
import os
import re
import signal
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness import (
    REPO,
    BenchError,
    Child,
    Deadline,
    cpu_seconds,
    free_port,
    log_outcome,
    recorder_config,
    ro_connect,
    scratch_dir,
    targets_line,
    wait_for_log,
    yes,
)

TARGET_ADDED_P99_MS = 2.0
TARGET_ADDED_P99_RATE = 1000
TARGET_RATIO = 0.5
FRAME_BYTES = 180
WARMUP_FRACTION = 0.1
TICK = 0.001  # the paced sender sends a burst every millisecond
SESSION = "session_bench_x"
DOWN_HEAD = '{"type":"stream_chunk","data":{"sessionId":"' + SESSION + '","chunk":"'
DOWN_MID = '","metadata":{"type":"text","index":'
DOWN_END = "}}}"
UP_HEAD = '{"type":"session_status","payload":{"sessionId":"' + SESSION + '","note":"'
UP_MID = '","index":'
UP_END = "}}"
GO = '{"type":"bench_go"}'
DONE = '{"type":"bench_done"}'
RESULT_PREFIX = b'{"type":"bench_result"'
DONE_BYTES = DONE.encode()
STAMP = re.compile(rb'"index":(\d+),"t":(\d+)\}')
LISTENING = re.compile(r"peer listening on 127\.0\.0\.1:(\d+)")


# --- frames, shared by the peer and the client ------------------------------------------


def frame_builder(direction: str, n: int) -> Callable[[int, int], str]:
    """``build(index, t)``: a frame of about FRAME_BYTES bytes carrying ``index`` and ``t``."""
    head, mid, end = (
        (DOWN_HEAD, DOWN_MID, DOWN_END) if direction == "down" else (UP_HEAD, UP_MID, UP_END)
    )
    fixed = len(head) + len(mid) + len(',"t":') + len(end)
    fixed += len(str(max(n - 1, 0))) + len(str(time.monotonic_ns()))
    filler = ("lorem ipsum dolor sit amet " * 10)[: max(FRAME_BYTES - fixed, 0)]
    prefix = head + filler + mid

    def build(index: int, t: int) -> str:
        return f'{prefix}{index},"t":{t}{end}'

    return build


def digest(frames: Iterable[bytes]) -> str:
    """SHA-256 over length-prefixed frames, in order."""
    h = hashlib.sha256()
    for data in frames:
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


async def send_frames(
    ws: Any, build: Callable[[int, int], str], rate: int, n: int
) -> dict[str, Any]:
    """Send n frames: ``rate`` frames/s in 1 ms bursts, or as fast as possible if rate is 0."""
    send = ws.send
    clock = time.monotonic_ns
    sent: list[str] = []
    append = sent.append
    loop = asyncio.get_running_loop()
    start = loop.time()
    late = 0.0
    if rate <= 0:
        for i in range(n):
            frame = build(i, clock())
            await send(frame)
            append(frame)
    else:
        per_tick = max(1, round(rate * TICK))
        tick = per_tick / rate
        i = 0
        while i < n:
            due = min(n, (int((loop.time() - start) / tick) + 1) * per_tick)
            late = max(late, loop.time() - (start + (i // per_tick) * tick))
            while i < due:
                frame = build(i, clock())
                await send(frame)
                append(frame)
                i += 1
            wait = start + (i // per_tick) * tick - loop.time()
            if wait > 0 and i < n:
                await asyncio.sleep(wait)
    seconds = loop.time() - start
    return {
        "frames": sent,
        "seconds": seconds,
        "rate": n / seconds if seconds > 0 else math.inf,
        "max_late_ms": late * 1e3,
    }


def percentile(values: list[int], p: float) -> int:
    """Nearest rank on sorted values."""
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def analyze(recs: list[tuple[int, bytes]], n: int) -> dict[str, Any]:
    """Latency and throughput of received data frames ``(receive ns, bytes)``."""
    skip = int(n * WARMUP_FRACTION)
    lat: list[int] = []
    in_order = len(recs) == n
    for k, (now, data) in enumerate(recs):
        m = STAMP.search(data)
        if m is None or int(m[1]) != k:
            in_order = False
            continue
        if k >= skip:
            lat.append(now - int(m[2]))
    lat.sort()
    out: dict[str, Any] = {
        "received": len(recs),
        "in_order": in_order,
        "sha": digest(d for _, d in recs),
    }
    if lat:
        out["lat_ms"] = {
            "p50": percentile(lat, 50) / 1e6,
            "p99": percentile(lat, 99) / 1e6,
            "max": lat[-1] / 1e6,
            "mean": statistics.fmean(lat) / 1e6,
            "count": len(lat),
        }
    if len(recs) >= 2:
        first, last = recs[0][0], recs[-1][0]
        out["first_ns"], out["last_ns"] = first, last
        out["fps"] = len(recs) / ((last - first) / 1e9) if last > first else math.inf
    return out


# --- the peer (stands in for the daemon) -------------------------------------------------


async def peer_handler(ws: Any) -> None:
    target = urlsplit(ws.request.path)
    if not target.path.startswith("/bench"):
        # The recorder's passive link: read whatever it sends, answer nothing.
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass
        return
    q = {k: v[0] for k, v in parse_qs(target.query).items()}
    direction, rate, n = q["dir"], int(q["rate"]), int(q["n"])
    recv = ws.recv
    gc.disable()
    try:
        if direction == "down":
            go = await recv(decode=False)
            if go != GO.encode():
                raise RuntimeError(f"expected bench_go, got {go[:80]!r}")
            report = await send_frames(ws, frame_builder("down", n), rate, n)
            frames = report.pop("frames")
            done = await recv(decode=False)
            if done != DONE_BYTES:
                raise RuntimeError(f"expected bench_done, got {done[:80]!r}")
            result: dict[str, Any] = report | {
                "sent": len(frames),
                "sha": digest(f.encode() for f in frames),
            }
        else:
            clock = time.monotonic_ns
            recs: list[tuple[int, bytes]] = []
            append = recs.append
            while True:
                data = await recv(decode=False)
                now = clock()
                if data == DONE_BYTES:
                    break
                append((now, data))
            result = analyze(recs, n)
        await ws.send(json.dumps({"type": "bench_result", "data": result}, separators=(",", ":")))
        # The client closes first, as a UI would.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await ws.wait_closed()
    finally:
        gc.enable()
        gc.collect()


async def run_peer() -> None:
    from websockets.asyncio.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        peer_handler,
        "127.0.0.1",
        0,
        compression=None,
        max_size=None,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"peer listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        await stop.wait()


# --- the client ------------------------------------------------------------------------


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement on one connection, as the JSON spec says."""
    from websockets.asyncio.client import connect

    direction, rate, n = spec["dir"], spec["rate"], spec["n"]
    url = f"{spec['base']}/bench?dir={direction}&rate={rate}&n={n}&run={spec['run']}"
    out: dict[str, Any] = {}
    sent_all: list[bytes] = []
    recv_all: list[bytes] = []
    async with asyncio.timeout(spec["timeout"]):
        async with connect(
            url,
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=10,
            close_timeout=10,
        ) as ws:
            recv = ws.recv
            if direction == "down":
                await ws.send(GO)
                sent_all.append(GO.encode())
                clock = time.monotonic_ns
                recs: list[tuple[int, bytes]] = []
                append = recs.append
                for _ in range(n):
                    data = await recv(decode=False)
                    append((clock(), data))
                await ws.send(DONE)
                sent_all.append(DONE_BYTES)
                raw = await recv(decode=False)
                recv_all += [d for _, d in recs]
                recv_all.append(raw)
                peer = json.loads(raw)["data"]
                out["receiver"] = analyze(recs, n)
                out["sender"] = {k: peer[k] for k in ("seconds", "rate", "max_late_ms")}
                out["forwarded_ok"] = peer["sent"] == n and peer["sha"] == out["receiver"]["sha"]
            else:
                report = await send_frames(ws, frame_builder("up", n), rate, n)
                frames = [f.encode() for f in report.pop("frames")]
                await ws.send(DONE)
                sent_all += frames
                sent_all.append(DONE_BYTES)
                raw = await recv(decode=False)
                recv_all.append(raw)
                out["receiver"] = json.loads(raw)["data"]
                out["sender"] = report
                out["forwarded_ok"] = out["receiver"]["received"] == n and out["receiver"][
                    "sha"
                ] == digest(frames)
    if not recv_all[-1].startswith(RESULT_PREFIX):
        raise RuntimeError("the last frame was not bench_result")
    out["receiver"].pop("sha", None)
    out |= {
        "sent_count": len(sent_all),
        "sent_sha": digest(sent_all),
        "recv_count": len(recv_all),
        "recv_sha": digest(recv_all),
    }
    return out


def run_client() -> int:
    """Read one JSON spec per line; print one JSON result per line."""
    for line in sys.stdin:
        spec = json.loads(line)
        gc.collect()
        gc.disable()
        try:
            result = asyncio.run(measure(spec))
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            gc.enable()
        print(json.dumps(result), flush=True)
    return 0


# --- processes ---------------------------------------------------------------------------


def source_digest() -> str:
    """Which recorder code was measured: SHA-256 over every recorder/**/*.py, subpackages
    included, each file as its path relative to recorder/ and its bytes, in path order
    (first 12 hex digits)."""
    root = REPO / "recorder"
    h = hashlib.sha256()
    for rel in sorted(path.relative_to(root).as_posix() for path in root.rglob("*.py")):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()[:12]


PROXY_CONFIG = """
[proxy]
listen = "127.0.0.1:{proxy}"
"""


# --- the driver ------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    kind: str  # "latency" or "throughput"
    dir: str  # "down" (peer -> client) or "up"
    rate: int  # frames/s; 0: as fast as possible
    n: int


@dataclass
class Bench:
    args: argparse.Namespace
    root: Path
    deadline: Deadline
    db: Path = field(init=False)
    peer: Child | None = None
    recorder: Child | None = None
    client: Child | None = None
    peer_port: int = 0
    proxy_port: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    next_run: int = 0
    _reader: asyncio.StreamReader | None = None
    _transport: asyncio.BaseTransport | None = None

    def __post_init__(self) -> None:
        self.db = self.root / "bench.db"

    def start(self) -> None:
        py = sys.executable
        me = str(Path(__file__).resolve())
        self.peer = Child("peer", [py, me, "--peer"], self.root, die_with_parent=True)
        budget = max(self.deadline.left(), 0.1)
        self.peer_port = int(wait_for_log(self.peer, LISTENING, budget).group(1))
        self.proxy_port = free_port()
        config = self.root / "config.toml"
        config.write_text(
            recorder_config(self.peer_port, f"sqlite:///{self.db}")
            + PROXY_CONFIG.format(proxy=self.proxy_port)
        )
        self.recorder = Child(
            "recorder",
            [py, "-m", "recorder", "run", "--config", str(config)],
            self.root,
            die_with_parent=True,
        )
        budget = max(self.deadline.left(), 0.1)
        wait_for_log(self.recorder, re.compile(r'"event": "recorder started"'), budget)
        self.client = Child(
            "client",
            [py, me, "--client"],
            self.root,
            pipe_stdin=True,
            pipe_stdout=True,
            die_with_parent=True,
        )

    def stop(self) -> dict[str, Any]:
        """Stop the client, then the recorder (SIGTERM: it must drain and exit 0)."""
        assert self.recorder is not None and self.client is not None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.client.kill()
        exit_code = self.recorder.terminate(min(90.0, max(self.deadline.left(), 5.0)))
        stopped, warnings = log_outcome(self.recorder.log())
        return {"exit_code": exit_code, "logged_stopped": stopped, "warnings": warnings}

    def close(self) -> None:
        for child in (self.client, self.recorder, self.peer):
            if child is not None:
                child.stop()

    async def measure(self, point: Point, via: str, label: str) -> dict[str, Any]:
        assert self.client is not None and self.client.proc.stdin is not None
        assert self.recorder is not None and self.peer is not None
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
        pids = {"peer": self.peer.pid, "client": self.client.pid, "recorder": self.recorder.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        cpu0["recorder_main"] = cpu_seconds(self.recorder.pid, children=False)
        wall0 = time.monotonic()
        watcher = None
        if via == "proxy" and point.kind == "throughput":
            # down: bench_go, n chunks, bench_done, bench_result; up: n, bench_done, bench_result
            total = point.n + (3 if point.dir == "down" else 2)
            watcher = asyncio.create_task(self.watch_commits(run, total, timeout + 30))
        self.client.proc.stdin.write((json.dumps(spec) + "\n").encode())
        self.client.proc.stdin.flush()
        try:
            async with asyncio.timeout(timeout + 10):
                line = await (await self.client_stdout()).readline()
        except TimeoutError:
            raise BenchError(
                f"{label}: the client did not answer in {timeout + 10:.0f} s"
            ) from None
        if not line:
            raise BenchError(f"{label}: the client died:\n{self.client.log()[-2000:]}")
        wall = time.monotonic() - wall0
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            if watcher is not None:
                watcher.cancel()
            raise BenchError(f"{label}: {result['error']}\n{self.client.log()[-2000:]}")
        committed_ns = None
        if watcher is not None:
            # Every row is committed within a commit interval or so of the last frame.
            with contextlib.suppress(TimeoutError):
                committed_ns = await asyncio.wait_for(watcher, 30)
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        cpu["recorder_main"] = (
            cpu_seconds(self.recorder.pid, children=False) - cpu0["recorder_main"]
        )
        result |= {
            "run": run,
            "label": label,
            "kind": point.kind,
            "dir": point.dir,
            "rate": point.rate,
            "n": point.n,
            "via": via,
            "wall_s": wall,
            "cpu_s": cpu,
        }
        rx = result["receiver"]
        if committed_ns is not None and "first_ns" in rx:
            result["recorded_fps"] = point.n / ((committed_ns - rx["first_ns"]) / 1e9)
            result["commit_lag_ms"] = (committed_ns - rx["last_ns"]) / 1e6
        self.runs.append(result)
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

    async def watch_commits(self, run: int, total: int, limit: float) -> int | None:
        """Monotonic ns at which the run's connection has ``total`` frames committed."""
        until = time.monotonic() + limit
        con: sqlite3.Connection | None = None
        cid: int | None = None
        try:
            while time.monotonic() < until:
                await asyncio.sleep(0.05)
                if con is None:
                    con = ro_connect(self.db)
                if cid is None:
                    cid = find_connection(con, run)
                    continue
                top = con.execute(
                    "select max(seq) from frames where connection_id = ?", (cid,)
                ).fetchone()[0]
                if top is not None and top >= total:
                    return time.monotonic_ns()
            return None
        finally:
            if con is not None:
                con.close()


def find_connection(con: sqlite3.Connection, run: int) -> int | None:
    for cid, url in con.execute("select id, url from connections where role = 'proxy'"):
        if parse_qs(urlsplit(url).query).get("run") == [str(run)]:
            return int(cid)
    return None


def verify(db: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each proxied run: rows per direction, byte-identical in order, and frame_count."""
    problems: list[str] = []
    proxied = [r for r in runs if r["via"] == "proxy"]
    frames = 0
    con = ro_connect(db)
    try:
        n_conns = con.execute("select count(*) from connections where role = 'proxy'").fetchone()[0]
        if n_conns != len(proxied):
            problems.append(f"{n_conns} proxy connections, expected {len(proxied)}")
        for r in proxied:
            cid = find_connection(con, r["run"])
            if cid is None:
                problems.append(f"{r['label']}: no connection row")
                continue
            frame_count, closed = con.execute(
                "select frame_count, closed_at_us from connections where id = ?", (cid,)
            ).fetchone()
            for direction, count, sha in (
                ("out", r["sent_count"], r["sent_sha"]),
                ("in", r["recv_count"], r["recv_sha"]),
            ):
                rows = con.execute(
                    "select payload, payload_bytes, opcode from frames"
                    " where connection_id = ? and direction = ? order by seq",
                    (cid, direction),
                ).fetchall()
                frames += len(rows)
                if len(rows) != count:
                    problems.append(f"{r['label']}: {len(rows)} '{direction}' rows, sent {count}")
                got = digest(p.encode() if p is not None else bytes(b) for p, b, _ in rows)
                if got != sha:
                    problems.append(f"{r['label']}: '{direction}' payloads differ from the wire")
                if any(op != 1 for _, _, op in rows):
                    problems.append(f"{r['label']}: '{direction}' rows not stored as text")
            if frame_count != r["sent_count"] + r["recv_count"]:
                problems.append(f"{r['label']}: connections.frame_count {frame_count}")
            if closed is None:
                problems.append(f"{r['label']}: connection row not closed")
        for r in runs:
            if not r["forwarded_ok"]:
                problems.append(f"{r['label']}: data frames did not arrive unchanged")
            if not r["receiver"].get("in_order"):
                problems.append(f"{r['label']}: data frames missing or out of order")
    finally:
        con.close()
    return {
        "ok": not problems,
        "proxied_runs": len(proxied),
        "frames_checked": frames,
        "problems": problems,
    }


def plan(args: argparse.Namespace) -> list[tuple[str, Point]]:
    if args.quick:
        lat = [(1000, 1.0), (10000, 0.5)]
        n = args.frames or 20_000
    else:
        lat = [(1000, 3.0), (10000, 2.0)]
        n = args.frames or 100_000
    points: list[tuple[str, Point]] = []
    for rate, seconds in lat:
        for d in ("down", "up"):
            points.append((f"latency {d} {rate}/s", Point("latency", d, rate, int(rate * seconds))))
    for d in ("down", "up"):
        points.append((f"throughput {d}", Point("throughput", d, 0, n)))
    return points


async def drive(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    try:
        return await _drive(args, bench)
    finally:
        if bench._transport is not None:
            bench._transport.close()


async def _drive(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    bench.start()
    points = plan(args)
    for d in ("down", "up"):
        for via in ("direct", "proxy"):
            await bench.measure(Point("warmup", d, 0, 5000), via, f"warm-up {d} {via}")
    warmups = len(bench.runs)
    for rep in range(args.repeat):
        for label, point in points:
            for via in ("direct", "proxy"):
                if not args.json:
                    print(f"[{rep + 1}/{args.repeat}] {label} {via}", file=sys.stderr, flush=True)
                await bench.measure(point, via, f"{label} {via} #{rep + 1}")
    recorder = bench.stop()
    recorded = verify(bench.db, bench.runs)
    return summarize(args, points, bench.runs[warmups:], recorder, recorded)


# --- the report ------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else float("nan")


def cores_busy(run: dict[str, Any]) -> float:
    cpu = run["cpu_s"]
    busy: float = (cpu["peer"] + cpu["client"] + cpu["recorder"]) / run["wall_s"]
    return busy


def summarize(
    args: argparse.Namespace,
    points: list[tuple[str, Point]],
    runs: list[dict[str, Any]],
    recorder: dict[str, Any],
    recorded: dict[str, Any],
) -> dict[str, Any]:
    def pick(point: Point, via: str) -> list[dict[str, Any]]:
        return [
            r
            for r in runs
            if r["kind"] == point.kind
            and r["dir"] == point.dir
            and r["rate"] == point.rate
            and r["via"] == via
        ]

    latency: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    for _, point in points:
        direct, proxy = pick(point, "direct"), pick(point, "proxy")
        if point.kind == "latency":
            row: dict[str, Any] = {"dir": point.dir, "rate": point.rate, "frames": point.n}
            for via, rs in (("direct", direct), ("proxy", proxy)):
                row[via] = {
                    k: median(r["receiver"]["lat_ms"][k] for r in rs) for k in ("p50", "p99", "max")
                }
                row[via]["sent_rate"] = median(r["sender"]["rate"] for r in rs)
            for k in ("p50", "p99"):
                row[f"added_{k}"] = median(
                    p["receiver"]["lat_ms"][k] - d["receiver"]["lat_ms"][k]
                    for d, p in zip(direct, proxy, strict=True)
                )
            latency.append(row)
        else:
            d_fps = median(r["receiver"]["fps"] for r in direct)
            p_fps = median(r["receiver"]["fps"] for r in proxy)
            throughput.append(
                {
                    "dir": point.dir,
                    "frames": point.n,
                    "direct_fps": d_fps,
                    "proxy_fps": p_fps,
                    "ratio": p_fps / d_fps,
                    "ratios": [
                        p["receiver"]["fps"] / d["receiver"]["fps"]
                        for d, p in zip(direct, proxy, strict=True)
                    ],
                    "recorded_fps": median(r.get("recorded_fps", math.nan) for r in proxy),
                    "commit_lag_ms": median(r.get("commit_lag_ms", math.nan) for r in proxy),
                    "cpu_s_proxied": {
                        k: median(r["cpu_s"][k] for r in proxy)
                        for k in ("peer", "client", "recorder", "recorder_main")
                    },
                    # CPU-seconds of peer, client and recorder per wall-second: how many
                    # of the machine's cores the measurement kept busy.
                    "cores_busy_proxied": median(cores_busy(r) for r in proxy),
                    "cores_busy_direct": median(cores_busy(r) for r in direct),
                    "cpu_s_direct": {
                        k: median(r["cpu_s"][k] for r in direct)
                        for k in ("peer", "client", "recorder")
                    },
                }
            )
    at_target = [r for r in latency if r["rate"] == TARGET_ADDED_P99_RATE]
    targets = {
        "added_p99_lt_2ms_at_1000": bool(at_target)
        and all(r["added_p99"] < TARGET_ADDED_P99_MS for r in at_target),
        "throughput_ratio_ge_0.5": bool(throughput)
        and all(t["ratio"] >= TARGET_RATIO for t in throughput),
        "every_frame_recorded": recorded["ok"],
        "clean_stop": recorder["exit_code"] == 0 and recorder["logged_stopped"],
    }
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "nproc": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_start": args.loadavg_start,
            "loadavg_end": os.getloadavg(),
        },
        "recorder_source": {"start": args.source_start, "end": source_digest()},
        "repeat": args.repeat,
        "quick": args.quick,
        "frame_bytes": FRAME_BYTES,
        "latency": latency,
        "throughput": throughput,
        "recorded": recorded,
        "recorder": recorder,
        "targets": targets,
        "runs": runs,
    }


def print_table(s: dict[str, Any]) -> None:
    print(
        f"proxy benchmark: {s['repeat']} repeat(s), medians; one-way latency in ms, "
        f"first {WARMUP_FRACTION:.0%} of each run dropped"
    )
    print(
        f"  {'rate':>7} {'dir':<5} {'direct p50':>10} {'p99':>6} {'max':>6}"
        f"  {'proxied p50':>11} {'p99':>6} {'max':>6}  {'added p50':>9} {'p99':>6}"
    )
    for r in s["latency"]:
        d, p = r["direct"], r["proxy"]
        print(
            f"  {r['rate']:>5}/s {r['dir']:<5} {d['p50']:>10.3f} {d['p99']:>6.3f} {d['max']:>6.2f}"
            f"  {p['p50']:>11.3f} {p['p99']:>6.3f} {p['max']:>6.2f}"
            f"  {r['added_p50']:>+9.3f} {r['added_p99']:>+6.3f}"
        )
    print(
        f"  {'throughput':<13} {'direct f/s':>10} {'proxied f/s':>11} {'ratio':>6}"
        f"  {'recorded f/s':>12}  cores busy direct/proxied"
        f"  cpu-s proxied: peer/client/recorder (its main process)"
    )
    for t in s["throughput"]:
        c = t["cpu_s_proxied"]
        print(
            f"  {t['dir']:<5} {t['frames']:>7,} {t['direct_fps']:>10,.0f} {t['proxy_fps']:>11,.0f}"
            f" {t['ratio']:>6.3f}  {t['recorded_fps']:>12,.0f}"
            f"  {t['cores_busy_direct']:>11.2f}/{t['cores_busy_proxied']:.2f}"
            f"  {c['peer']:.1f}/{c['client']:.1f}/{c['recorder']:.1f} ({c['recorder_main']:.1f})"
        )
    rec = s["recorded"]
    print(
        f"  every frame recorded: {yes(rec['ok'])} ({rec['proxied_runs']} proxied connections,"
        f" {rec['frames_checked']:,} frames, byte-identical)"
    )
    for problem in rec["problems"][:10]:
        print(f"    problem: {problem}")
    m = s["machine"]
    load = "/".join(f"{x:.2f}" for x in m["loadavg_start"])
    print(f"  machine: {m['nproc']} CPUs, Python {m['python']}, load average at start {load}")
    src = s["recorder_source"]
    changed = "" if src["start"] == src["end"] else f" -> {src['end']} (CHANGED DURING THE RUN)"
    print(f"  recorder source sha256 {src['start']}{changed}")
    r = s["recorder"]
    print(f"  recorder exit {r['exit_code']}, logged stopped: {yes(r['logged_stopped'])}")
    for w in r["warnings"][:5]:
        print(f"    log: {w}")
    print(targets_line(s["targets"]))


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short runs (about 15 s in all)")
    p.add_argument(
        "--frames", type=int, default=0, help="throughput frames (100 000; quick 20 000)"
    )
    p.add_argument("--repeat", type=int, default=0, help="repeats of every point (2; quick 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--timeout", type=float, default=600.0, help="overall limit, seconds")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.frames < 0 or args.repeat < 0 or args.timeout <= 0:
        p.error("--frames and --repeat must not be negative, --timeout positive")
    args.repeat = args.repeat or (1 if args.quick else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peer:
        asyncio.run(run_peer())
        return 0
    if args.client:
        return run_client()
    deadline = Deadline(args.timeout)
    # Other work on the machine shows in the numbers; the load average says how much there was.
    args.loadavg_start = os.getloadavg()
    args.source_start = source_digest()
    # SIGTERM to the benchmark must still reach the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with scratch_dir("bench-proxy-", args.keep) as root:
        bench = Bench(args, root, deadline)
        try:
            summary = asyncio.run(asyncio.wait_for(drive(args, bench), deadline.left()))
        except (BenchError, TimeoutError) as exc:
            print(f"benchmark failed: {exc or 'overall timeout'}", file=sys.stderr)
            return 2
        finally:
            bench.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if summary["recorded"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
