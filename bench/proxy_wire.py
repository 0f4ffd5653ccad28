"""The two far ends of the proxy benchmark: the peer (``python bench/proxy_wire.py``)
stands in for the daemon, which cannot stamp frames as it sends them; :func:`client`
for a UI. Frames down are shaped like ``stream_chunk``, up like ``session_status``, each
about :data:`FRAME_BYTES` with ``"index":i,"t":<monotonic_ns at send>``: CLOCK_MONOTONIC
is one clock for every process, so receive time - ``t`` is the one-way latency. Only
paths under ``/bench`` take part; the recorder's own link (``/``) is read and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

FRAME_BYTES = 180
WARMUP_FRACTION = 0.1  # of each run's frames, dropped from the latencies
HEADS = {
    "down": ('{"type":"stream_chunk","data":{"sessionId":"session_bench_x","chunk":"', "}}}"),
    "up": ('{"type":"session_status","payload":{"sessionId":"session_bench_x","note":"', "}}"),
}
GO = b'{"type":"bench_go"}'
DONE = b'{"type":"bench_done"}'
STAMP = re.compile(rb'"index":(\d+),"t":(\d+)\}')
# Compression off everywhere: the proxy never negotiates it, so direct must not either.
OPTIONS: dict[str, Any] = {"compression": None, "max_size": None, "ping_interval": None}
LISTENING = re.compile(r"peer listening on 127\.0\.0\.1:(\d+)")


def frame_builder(direction: str, n: int) -> Callable[[int, int], str]:
    """``build(index, t)``: a frame of about FRAME_BYTES bytes carrying ``index`` and ``t``."""
    head, end = HEADS[direction]
    mid = '","metadata":{"type":"text","index":' if direction == "down" else '","index":'
    fixed = len(head) + len(mid) + len(',"t":') + len(end) + len(str(max(n - 1, 0)))
    fixed += len(str(time.monotonic_ns()))
    prefix = head + ("lorem ipsum dolor sit amet " * 10)[: max(FRAME_BYTES - fixed, 0)] + mid
    return lambda index, t: f'{prefix}{index},"t":{t}{end}'


def digest(frames: Iterable[bytes]) -> str:
    """SHA-256 over length-prefixed frames, in order."""
    sha = hashlib.sha256()
    for data in frames:
        sha.update(len(data).to_bytes(8, "big") + data)
    return sha.hexdigest()


async def send_frames(ws: Any, direction: str, rate: int, n: int) -> list[bytes]:
    """n frames, ``rate`` a second in 1 ms bursts on a ``loop.time()`` schedule (catching
    up if it wakes late), or as fast as ``await send`` allows if ``rate`` is 0."""
    build, send, clock = frame_builder(direction, n), ws.send, time.monotonic_ns
    loop = asyncio.get_running_loop()
    per_tick = max(1, round(rate / 1000)) if rate else n
    tick = per_tick / rate if rate else 0.0
    start, sent = loop.time(), list[str]()
    while len(sent) < n:
        due = min(n, (int((loop.time() - start) / tick) + 1) * per_tick) if rate else n
        while len(sent) < due:
            frame = build(len(sent), clock())
            await send(frame)
            sent.append(frame)
        if (wait := start + len(sent) // per_tick * tick - loop.time()) > 0 and len(sent) < n:
            await asyncio.sleep(wait)
    return [frame.encode() for frame in sent]


def analyze(recs: list[tuple[int, bytes]], n: int) -> dict[str, Any]:
    """Latency and rate of received data frames ``(receive ns, bytes)``, parsed only
    after the run (the receiver only appends while frames arrive)."""
    lat: list[int] = []
    in_order = len(recs) == n
    for k, (now, data) in enumerate(recs):
        m = STAMP.search(data)
        if m is None or int(m[1]) != k:
            in_order = False
        elif k >= n * WARMUP_FRACTION:
            lat.append(now - int(m[2]))
    lat.sort()
    out: dict[str, Any] = {"received": len(recs), "in_order": in_order}
    out["sha"] = digest(d for _, d in recs)
    if lat:
        rank = {p: max(0, math.ceil(p / 100 * len(lat)) - 1) for p in (50, 99, 100)}  # nearest
        out["lat_ms"] = {f"p{p}": lat[i] / 1e6 for p, i in rank.items()}
    if len(recs) >= 2 and (span := recs[-1][0] - recs[0][0]) > 0:
        out["fps"] = len(recs) / (span / 1e9)
    return out


async def receive(ws: Any, n: int | None) -> list[tuple[int, bytes]]:
    """n frames (None: until bench_done), each with its receive time."""
    recv, clock, recs = ws.recv, time.monotonic_ns, list[tuple[int, bytes]]()
    while n is None or len(recs) < n:
        data = await recv(decode=False)
        if n is None and data == DONE:
            break
        recs.append((clock(), data))
    return recs


async def peer_handler(ws: Any) -> None:
    target = urlsplit(ws.request.path)
    if not target.path.startswith("/bench"):
        with contextlib.suppress(Exception):  # the recorder's link: read, answer nothing
            async for _ in ws:
                pass
        return
    q = {k: v[0] for k, v in parse_qs(target.query).items()}
    n = int(q["n"])
    gc.disable()
    try:
        if q["dir"] == "down":
            if (go := await ws.recv(decode=False)) != GO:
                raise RuntimeError(f"expected bench_go, got {go[:80]!r}")
            frames = await send_frames(ws, "down", int(q["rate"]), n)
            if (done := await ws.recv(decode=False)) != DONE:
                raise RuntimeError(f"expected bench_done, got {done[:80]!r}")
            result: dict[str, Any] = {"sent": len(frames), "sha": digest(frames)}
        else:
            result = analyze(await receive(ws, None), n)
        await ws.send(json.dumps({"type": "bench_result", "data": result}))
        with contextlib.suppress(TimeoutError):  # the client closes first, as a UI would
            async with asyncio.timeout(30):
                await ws.wait_closed()
    finally:
        gc.enable()


async def run_peer() -> None:
    from websockets.asyncio.server import serve

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with serve(peer_handler, "127.0.0.1", 0, **OPTIONS) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"peer listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        await stop.wait()


async def client(url: str, direction: str, rate: int, n: int) -> dict[str, Any]:
    """One measurement on one connection to ``url`` (whose query tells the peer the
    same): the receiver's analysis, whether the data frames arrived unchanged, and the
    count and SHA-256 of every frame sent and received, to check the recorded rows."""
    from websockets.asyncio.client import connect

    async with connect(url, **OPTIONS) as ws:
        if direction == "down":
            await ws.send(GO.decode())
            recs = await receive(ws, n)
            await ws.send(DONE.decode())
            sent = [GO, DONE]
        else:
            sent = await send_frames(ws, "up", rate, n)
            await ws.send(DONE.decode())
            sent.append(DONE)
            recs = []
        raw = await ws.recv(decode=False)
    peer = json.loads(raw)["data"]
    if direction == "down":
        receiver = analyze(recs, n)
        forwarded = peer["sent"] == n and peer["sha"] == receiver["sha"]
    else:
        receiver = peer
        forwarded = peer["received"] == n and peer["sha"] == digest(sent[:-1])
    received = [d for _, d in recs] + [raw]
    return {
        "receiver": {k: v for k, v in receiver.items() if k != "sha"},
        "forwarded_ok": forwarded,
        "sent": [len(sent), digest(sent)],
        "received": [len(received), digest(received)],
    }


if __name__ == "__main__":
    asyncio.run(run_peer())
