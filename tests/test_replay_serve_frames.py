"""``recorder replay --serve`` with conversations made for the purpose: recorded pauses
scaled by the pace, frames that are not JSON text played with their opcode, no daemon
status recorded, and a long session served as it is read, in bounded memory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recorder.db.rows import Session as SessionRow
from recorder.protocol.daemon import HEALTH_CHECK_FRAME
from recorder.protocol.frames import IN
from recorder.replay.plan import Choice, ReplayFrame
from recorder.replay.source import Conversation, Session
from recorder.replay.timing import Pace
from tests.serve_client import TIMEOUT, ask, client, recv, serving, url, wire

SID = "session_1795692537464_timing"
T0_US = 1_795_692_537_000_000
T0_NS = 5_000_000_000


def _frame(fid: int, at: float, kind: str | None, is_text: bool, data: bytes) -> ReplayFrame:
    return ReplayFrame(
        fid, 1, fid, IN, T0_US + int(at * 1e6), T0_NS + int(at * 1e9), kind, is_text, data
    )


def paused() -> Conversation:
    """A conversation with a known 1 s pause, and two frames that are not JSON text."""
    chunk = json.dumps({"type": "stream_chunk", "data": {"sessionId": SID, "chunk": "one"}})
    session = Session(SessionRow(SID), [], Choice(frozenset({1}), ()), [])
    hello = _frame(1, 0.0, "health_check_response", True, b'{"type":"health_check_response"}')
    replies = [
        _frame(2, 0.0, "stream_chunk", True, chunk.encode()),
        _frame(3, 1.0, None, True, b'{"type":"stream_chunk","chunk":"\xff\xfe"}'),  # not UTF-8
        _frame(4, 1.0, None, False, b"\x00\x01binary"),
    ]
    return Conversation(session, hello, replies, [], None)


@pytest.mark.parametrize(
    ("pace", "low", "high"),
    [(Pace(speed=4), 0.15, 0.8), (Pace(max_idle=0.2), 0.1, 0.7)],
    ids=["speed-4", "max-idle-0.2"],
)
async def test_pauses_are_scaled_and_frames_keep_their_opcode(
    pace: Pace, low: float, high: float
) -> None:
    conv = paused()
    async with serving(conv, pace=pace) as server, client(url(server)) as ws:
        assert await recv(ws) == (True, b'{"type":"health_check_response"}')
        first = await recv(ws)
        started = time.monotonic()
        rest = [await recv(ws), await recv(ws)]
        elapsed = time.monotonic() - started
    assert [first, *rest] == [wire(f) for f in conv.replies]
    assert low <= elapsed <= high, elapsed


async def test_daemon_status_without_one_recorded_is_an_error() -> None:
    async with serving(paused()) as server, client(url(server)) as ws:
        for _ in range(4):
            await recv(ws)
        answer = await ask(ws, {"type": "daemon_status"})
        assert answer["type"] == "error"


SERVE = ("--serve", "127.0.0.1:0", "--instant")


def test_a_long_session_is_served_as_it_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """Today's main read the whole session into memory before it listened (1.16 GB and
    5.5 s for a million frames). Here 2 000 frames of 50 kB, 100 MB: played byte-exact,
    by a process that never holds more than a few pages of them."""
    from websockets.sync.client import connect as connect_sync

    from tests.reading_session import SID as LONG
    from tests.reading_session import chunk, fill, status

    path = tmp_path / "long.db"
    frames = [(IN, status("running")), *[(IN, chunk(i, pad=50_000)) for i in range(2000)]]
    asyncio.run(fill(f"sqlite+aiosqlite:///{path}", frames))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", "replay", "--database", str(path), LONG, *SERVE],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline().decode()
        assert "as a daemon on ws://" in line, line + proc.stderr.read().decode()
        with connect_sync(line.split()[-1], max_size=None) as ws:
            assert ws.recv(timeout=TIMEOUT) == HEALTH_CHECK_FRAME  # a link's session
            got = [ws.recv(timeout=TIMEOUT, decode=False) for _ in frames]
        assert got == [data for _, data in frames]
        # Its own peak (wait4's would count this process's, from before exec).
        proc_status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kib = int(proc_status.split("VmHWM:")[1].split()[0])
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(TIMEOUT)
    assert code == 0
    assert peak_kib < 90 * 1024, f"peak RSS {peak_kib} kB"
