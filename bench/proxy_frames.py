"""The proxy benchmark's frames, shared by its peer (``proxy_peer.py``) and its client
(``proxy_client.py``): how they are built, sent, timed and hashed.

Frames from the peer ("down") are shaped like the protocol's ``stream_chunk``
(``{"type":"stream_chunk","data":{"sessionId":...,"chunk":...,"metadata":{"type":"text",
"index":i,"t":<monotonic_ns at send>}}}``), frames to it ("up") like a client's
``session_status`` request with the same ``index``/``t`` pair; both are padded to about
:data:`FRAME_BYTES` bytes. ``bench_go``, ``bench_done`` and ``bench_result`` are the
control frames around a measurement.

The sender stamps each frame with ``time.monotonic_ns()`` right before ``send``
(:func:`send_frames`); the receiver only appends ``(receive ns, bytes)`` while frames
arrive, and :func:`analyze` parses the stamps afterwards. CLOCK_MONOTONIC is one clock
for every process on a machine, so the difference is the one-way latency.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

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
