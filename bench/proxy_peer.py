"""The proxy benchmark's peer: a small ``websockets`` server standing in for the daemon.

It is used instead of ``recorder simulate`` because timing needs frames stamped at the
moment they are sent (``proxy_frames.py``), and the simulator has no hook for that.
Only connections whose path starts with ``/bench`` take part (the proxy forwards the
request path and query, which say the direction, the rate and the number of frames);
the recorder's own passive link (path ``/``) is read and ignored. It runs in its own
process, ``python bench/proxy_peer.py``, and says its port on stderr (:data:`LISTENING`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import signal
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from proxy_frames import DONE_BYTES, GO, analyze, digest, frame_builder, send_frames

LISTENING = re.compile(r"peer listening on 127\.0\.0\.1:(\d+)")


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


if __name__ == "__main__":
    asyncio.run(run_peer())
