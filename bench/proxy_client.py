"""The proxy benchmark's client: a UI-like process that runs one measurement per request.

It reads one line of JSON per measurement on stdin (the direction, the rate, the number
of frames, the URL: the peer direct or the recorder's proxy) and prints one line of JSON
per result: the receiver's latencies and rate (``proxy_frames.analyze``), the sender's
pace, whether the data frames arrived unchanged, and the count and SHA-256 of every frame
it sent and received, which the driver checks the recorded rows against. Each
measurement is one WebSocket connection, with the garbage collector off. It runs in its
own process, ``python bench/proxy_client.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from typing import Any

from proxy_frames import (
    DONE,
    DONE_BYTES,
    GO,
    RESULT_PREFIX,
    analyze,
    digest,
    frame_builder,
    send_frames,
)


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement on one connection, as the JSON spec says."""
    from websockets.asyncio.client import connect

    direction, rate, n = spec["dir"], spec["rate"], spec["n"]
    url = f"{spec['base']}/bench?dir={direction}&rate={rate}&n={n}&run={spec['run']}"
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
            if direction == "down":
                out = await receive_down(ws, n, sent_all, recv_all)
            else:
                out = await send_up(ws, rate, n, sent_all, recv_all)
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


async def receive_down(
    ws: Any, n: int, sent_all: list[bytes], recv_all: list[bytes]
) -> dict[str, Any]:
    """bench_go, then receive the peer's n frames, bench_done and the peer's bench_result;
    every frame either way is added to ``sent_all`` / ``recv_all``."""
    recv = ws.recv
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
    receiver = analyze(recs, n)
    return {
        "receiver": receiver,
        "sender": {k: peer[k] for k in ("seconds", "rate", "max_late_ms")},
        "forwarded_ok": peer["sent"] == n and peer["sha"] == receiver["sha"],
    }


async def send_up(
    ws: Any, rate: int, n: int, sent_all: list[bytes], recv_all: list[bytes]
) -> dict[str, Any]:
    """Send n frames at ``rate`` (0: flat out), bench_done, then receive the peer's
    bench_result; every frame either way is added to ``sent_all`` / ``recv_all``."""
    report = await send_frames(ws, frame_builder("up", n), rate, n)
    frames = [f.encode() for f in report.pop("frames")]
    await ws.send(DONE)
    sent_all += frames
    sent_all.append(DONE_BYTES)
    raw = await ws.recv(decode=False)
    recv_all.append(raw)
    receiver = json.loads(raw)["data"]
    return {
        "receiver": receiver,
        "sender": report,
        "forwarded_ok": receiver["received"] == n and receiver["sha"] == digest(frames),
    }


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


if __name__ == "__main__":
    sys.exit(run_client())
