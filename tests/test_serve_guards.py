"""Findings of an attack on `replay --serve` as issue 17 left it (read as it plays, a
page ahead): clients that do not read, frames it reads past, --wait-for-client on a
long session. One test each; each failed before its fix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as connect_sync

from recorder.protocol.frames import IN, OUT
from recorder.times import now_us
from tests.cleanup_scripts import SECOND, status
from tests.conftest import TIMEOUT
from tests.deaf_clients import deaf_client, wait_backed_up
from tests.serve_client import served
from tests.writer_batches import Frame, commit, write

# --- replay --serve: frames it reads past --------------------------------------------------


def test_serve_answers_while_it_reads_past_frames_it_does_not_play(tmp_path: Path) -> None:
    """A stall of the served replay. On SQLite, Stream.read_page ran on the server's
    event loop and read page after page until one holds a frame it plays: 150 000
    frames it does not play (here the UI's own requests, as a UI polling
    session_status every second for two days sends) blocked the loop for 0.5 s, in
    which no ping, /health or handshake of any client was answered; a million, 3.5 s;
    ten million, longer than a client's open_timeout."""
    db_path = tmp_path / "r.db"
    sid = "session_polled"
    polls = 150_000

    async def batches(db: Any, store: Any, _: int) -> None:
        t0 = now_us() - 100 * SECOND
        link = await db.run(store.open_connection, "link", "ws://daemon", t0 - SECOND)
        ask = json.dumps({"type": "session_status", "payload": {"sessionId": sid}}).encode()
        frames: list[Frame] = [(link, 1, IN, t0, 0, True, status(sid, "running"))]
        frames += [(link, i, OUT, t0 + i, i * 1000, True, ask) for i in range(2, polls + 2)]
        frames.append((link, polls + 2, IN, t0 + polls + 5, 10**12, True, status(sid, "completed")))
        for start in range(0, len(frames), 10_000):
            await commit(db, store, frames[start : start + 10_000])

    asyncio.run(write(f"sqlite+aiosqlite:///{db_path}", batches))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    args = ["replay", "--database", str(db_path), sid, "--serve", "127.0.0.1:0", "--instant"]
    server = subprocess.Popen(
        [sys.executable, "-m", "recorder", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert server.stderr is not None
    slowest = 0.0
    try:
        line = server.stderr.readline().decode()
        assert "as a daemon on ws://" in line, line
        with connect_sync(line.split()[-1]) as ws:
            ws.recv(timeout=TIMEOUT)  # the hello
            played = 0
            deadline = time.monotonic() + TIMEOUT
            while played < 2 and time.monotonic() < deadline:
                asked = time.monotonic()
                ws.send('{"type":"ping"}')
                while ws.recv(timeout=TIMEOUT) != '{"type":"pong"}':
                    played += 1  # a played frame arrived first
                slowest = max(slowest, time.monotonic() - asked)
    finally:
        server.terminate()
        server.wait(TIMEOUT)
    assert played == 2
    assert slowest < 0.2, f"a ping waited {slowest:.2f} s for its pong"


# --- replay --serve: clients that do not read, and --wait-for-client on a long session ---


def a_long_session(path: Path, count: int) -> str:
    from tests.reading_session import SID as LONG
    from tests.reading_session import chunk as padded
    from tests.reading_session import fill
    from tests.reading_session import status as state

    frames = [(IN, state("running")), *[(IN, padded(i, pad=50_000)) for i in range(count)]]
    asyncio.run(fill(f"sqlite+aiosqlite:///{path}", frames))
    return LONG


def test_a_served_replay_stops_in_time_beside_a_client_that_does_not_read(
    tmp_path: Path,
) -> None:
    """A stall of the stop. serve.py sets close_timeout=2 so that Ctrl-C or SIGTERM
    "must not keep the command waiting long" for a client that stopped reading; but
    websockets' close() first waits, without limit, for its close frame to drain
    (send_context: drain() before the close deadline counts), so the stop waited until
    websockets' keepalive gave up on the client: 17-18 s after the signal here, up to
    ping_interval + ping_timeout (40 s). Now its clients are closed through
    dial.close_within (at once when the peer is not reading), as the link's and the
    proxy's are, and not after serve_forever(), which, cancelled, waits for every
    connection to end."""
    sid = a_long_session(tmp_path / "r.db", 300)
    proc, url = served(tmp_path / "r.db", sid)
    deaf = deaf_client(url)
    try:
        wait_backed_up([deaf])
        stopped = time.monotonic()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - stopped
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        deaf.close()
    assert took < 2.0 + 1.0, f"the stop took {took:.1f} s"


def test_served_replays_to_clients_that_do_not_read_take_bounded_memory(
    tmp_path: Path,
) -> None:
    """Unbounded growth. With --loop every client gets a player of its own, and each
    player holds its page and the page read ahead (4 MiB each, twice over: the rows'
    text and the frames' bytes), however many clients: 30 clients that never read
    took the process from 47 MB (one) to 519 MB, and nothing limited the number of
    clients (the proxy has max_clients). Now serve.MAX_CLIENTS are played to at once,
    and the next is told 429."""
    from recorder.replay.serve import MAX_CLIENTS

    sid = a_long_session(tmp_path / "r.db", 600)
    proc, url = served(tmp_path / "r.db", sid, "--loop")
    deaf = [deaf_client(url) for _ in range(MAX_CLIENTS)]
    try:
        wait_backed_up(deaf)
        with pytest.raises(InvalidStatus) as refused:
            connect_sync(url, open_timeout=TIMEOUT).close()
        status_text = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kib = int(status_text.split("VmHWM:")[1].split()[0])
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        for conn in deaf:
            conn.close()
    assert refused.value.response.status_code == 429
    print(f"peak RSS {peak_kib // 1024} MB for {MAX_CLIENTS} clients")
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib // 1024} MB for {MAX_CLIENTS} clients"


def test_wait_for_client_claims_in_time_that_grows_with_the_requests_not_their_square() -> None:
    """A stall of a served replay with --wait-for-client. Playback.claim looks for the
    earliest unclaimed recorded request from the first one every time, over the
    claimed ones too: a client sending a long session's requests in order costs
    n²/2 comparisons on the server's event loop (20 000 requests: 6.6 s, in which
    nothing else is answered; 100 000: minutes). Issue 17 made long sessions servable;
    this made them unservable with --wait-for-client."""
    from recorder.replay.matching import request_key
    from recorder.replay.playback import Playback

    def claim_all(n: int) -> float:
        requests = [
            json.dumps({"type": "session_status", "payload": {"sessionId": f"s{i}"}}).encode()
            for i in range(n)
        ]
        playback = Playback([request_key(r) for r in requests])
        started = time.perf_counter()
        for request in requests:
            assert playback.claim(request)
        return time.perf_counter() - started

    async def ratio() -> float:  # Playback's event is made on a running loop
        return claim_all(12_000) / claim_all(3_000)

    assert asyncio.run(ratio()) < 8, "claiming 4 times the requests took 16 times as long"
