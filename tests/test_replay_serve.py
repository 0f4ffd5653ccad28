"""``recorder replay --serve``: a recorded session played to a real client, as the daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from recorder.capture.handshake import http_get_health
from recorder.capture.wire import RecordingClientConnection
from recorder.cli import cli
from recorder.config import load_config
from recorder.db.recordings import Recordings
from recorder.db.rows import Session as SessionRow
from recorder.protocol.daemon import HEALTH_CHECK_FRAME
from recorder.protocol.frames import IN
from recorder.replay import source
from recorder.replay.plan import Choice, ReplayFrame
from recorder.replay.serve import Recorded as Recorded_
from recorder.replay.serve import ReplayServer
from recorder.replay.source import Conversation, Session
from recorder.replay.timing import Pace
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config
from tests.helpers import frame_bytes, query, wait_until
from tests.postmortem_recording import spawn_request

TIMEOUT = 20
# Long enough to show that a frame is not coming; only ever waited out in full then.
NOT_YET = 0.3
INSTANT = Pace(instant=True)

Wire = tuple[bool, bytes]


@dataclass
class Recorded:
    path: Path
    session: str
    conversation: Conversation


class _Counted:
    """A client connection that counts the frames it sends and receives."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames = 0

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(obj))
        self.frames += 1

    async def until(self, kind: str) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await self.ws.recv())
            self.frames += 1
            if message.get("type") == kind:
                return message


async def _record(path: Path, tmp: Path) -> str:
    """A UI through the real recorder's proxy: spawn, a task, a status question."""
    opts = SimulatorOptions(port=0, chunk_delay=0.005, seed=11, fail_rate=0.0)
    async with Simulator(opts) as sim:
        sections: dict[str, dict[str, Any]] = {
            "daemon": {"url": sim.url},
            "storage": {"url": f"sqlite:///{path}", "commit_interval": 0.05},
            "proxy": {"listen": "127.0.0.1:0"},
            "log": {"format": "json"},
        }
        config = load_config(write_config(tmp / "config.toml", sections), env={})
        async with running(config) as svc:
            assert svc.proxy is not None
            async with connect(f"ws://127.0.0.1:{svc.proxy.port}") as ws:
                ui = _Counted(ws)
                await ui.until("health_check_response")
                await ui.send(spawn_request("vp_7", "Implement feature X"))
                sid = str((await ui.until("session_spawned"))["session"]["id"])
                await ui.send(
                    {"type": "execute_task", "payload": {"sessionId": sid, "task": "Fix it"}}
                )
                await ui.until("task_failed")  # the session completed with its first task
                await ui.send({"type": "session_status", "payload": {"sessionId": sid}})
                await ui.until("session_status_update")

            async def all_recorded() -> bool:
                rows = await query(
                    svc,
                    "select count(*) as n from frames where connection_id in "
                    "(select id from connections where role = 'proxy')",
                )
                return bool(rows[0].n >= ui.frames)

            await wait_until(svc, all_recorded, timeout=TIMEOUT)
    return sid


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    tmp = tmp_path_factory.mktemp("replay-serve")
    path = tmp / "recorder.db"
    sid = asyncio.run(_record(path, tmp))
    reader = Recordings.open(f"sqlite:///{path}")
    try:
        conversation = source.conversation(reader, source.open_session(reader, sid))
    finally:
        reader.close()
    return Recorded(path, sid, conversation)


@pytest.fixture(params=["database", "memory"])
def played(request: pytest.FixtureRequest, recorded: Recorded) -> Iterator[Recorded_]:
    """The recording, read from the database as it plays (as `--serve` does), or whole."""
    if request.param == "memory":
        yield recorded.conversation
        return
    reader = Recordings.open(f"sqlite:///{recorded.path}")
    stream = source.Stream(reader, source.open_session(reader, recorded.session), requests=True)
    try:
        yield stream
    finally:
        stream.close()
        reader.close()


@asynccontextmanager
async def serving(conversation: Recorded_, **options: Any) -> AsyncIterator[ReplayServer]:
    """A ReplayServer on a free loopback port, in this event loop; cancelled on exit."""
    options.setdefault("pace", INSTANT)
    server = ReplayServer(conversation, **options)
    listening = asyncio.Event()
    task = asyncio.create_task(server.run("127.0.0.1", 0, ready=lambda port: listening.set()))
    try:
        async with asyncio.timeout(TIMEOUT):
            ready = asyncio.create_task(listening.wait())
            await asyncio.wait((ready, task), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
        yield server
    finally:
        task.cancel()
        async with asyncio.timeout(TIMEOUT):
            with suppress(asyncio.CancelledError):
                await task


def url(server: ReplayServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/{query}"


@asynccontextmanager
async def client(address: str, **options: Any) -> AsyncIterator[RecordingClientConnection]:
    """A client that sees each frame's opcode and exact bytes."""
    async with connect(address, create_connection=RecordingClientConnection, **options) as ws:
        yield cast(RecordingClientConnection, ws)  # connect() is not generic in its class


async def recv(ws: RecordingClientConnection, timeout: float = TIMEOUT) -> Wire:
    async with asyncio.timeout(timeout):
        return await ws.recv_raw()


async def nothing_yet(ws: RecordingClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await recv(ws, NOT_YET)


async def ask(ws: RecordingClientConnection, obj: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(obj))
    is_text, data = await recv(ws)
    assert is_text
    answer: dict[str, Any] = json.loads(data)
    return answer


def wire(frame: ReplayFrame) -> Wire:
    return frame.is_text, frame.data


# --- a recorded UI conversation, played back -------------------------------------


async def test_a_client_gets_the_hello_then_the_recorded_frames_byte_exact(
    recorded: Recorded, played: Recorded_
) -> None:
    conv = recorded.conversation
    # What the replay plays is what the recorder recorded on the UI's connection.
    args = ["--database", str(recorded.path), "--session", recorded.session]
    result = CliRunner().invoke(cli, ["frames", *args, "--format", "jsonl", "--limit", "0"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    chosen = conv.session.choice.conversations
    assert [
        frame_bytes(r) for r in rows if r["direction"] == IN and r["connection_id"] in chosen
    ] == [f.data for f in conv.replies]
    types = [f.type for f in conv.replies]
    assert {"session_spawned", "task_executing", "task_failed", "stream_chunk"} <= set(types)
    assert conv.hello is not None and conv.hello.type == "health_check_response"

    async with serving(played) as server, client(url(server)) as ws:
        got = [await recv(ws) for _ in range(1 + len(conv.replies))]
        assert got[0] == wire(conv.hello)
        assert got[1:] == [wire(f) for f in conv.replies]
        # Nothing else was sent: the next frame is the answer to a ping.
        assert await ask(ws, {"type": "ping"}) == {"type": "pong"}


async def test_requests_are_answered_from_the_recording(
    recorded: Recorded, played: Recorded_
) -> None:
    conv, sid = recorded.conversation, recorded.session
    assert conv.daemon_status is not None
    last = [f for f in conv.replies if f.type == "session_status_update"][-1]
    assert last.id > max(f.id for f in conv.replies if f.type == "session_spawned")
    async with serving(played) as server, client(url(server)) as ws:
        for _ in range(1 + len(conv.replies)):
            await recv(ws)
        await ws.send('{"type":"ping"}')
        assert await recv(ws) == (True, b'{"type":"pong"}')
        await ws.send('{"type":"daemon_status"}')
        assert await recv(ws) == wire(conv.daemon_status)
        await ws.send(json.dumps({"type": "session_status", "payload": {"sessionId": sid}}))
        assert await recv(ws) == wire(last)  # the latest state, as the daemon sent it
        assert await ask(ws, {"type": "list_sessions"}) == {
            "type": "sessions_list",
            "sessions": [json.loads(last.data)["session"]],
        }
        assert await ask(ws, {"type": "session_status", "payload": {"sessionId": "session_x"}}) == {
            "type": "error",
            "error": "Session not found: session_x",
        }
        invalid = (True, b'{"type":"error","error":"Invalid message format"}')
        for bad in ("not json", '{"type":"frobnicate"}', "[1]", b"\x00binary"):
            await ws.send(bad)
            assert await recv(ws) == invalid
        # An action the recording does not answer (no --wait-for-client) gets nothing.
        await ws.send(json.dumps({"type": "stop_session", "payload": {"sessionId": sid}}))
        await nothing_yet(ws)


async def test_wait_for_client_holds_each_reply_until_its_request(
    recorded: Recorded, played: Recorded_
) -> None:
    conv, sid = recorded.conversation, recorded.session
    assert [json.loads(r.data)["type"] for r in conv.requests] == [
        "spawn_session",
        "execute_task",
        "session_status",
    ]
    _, execute, status = conv.requests
    before_execute = [wire(f) for f in conv.replies if f.id < execute.id]
    after_execute = [wire(f) for f in conv.replies if execute.id < f.id]
    assert json.loads(before_execute[-1][1])["type"] == "session_spawned"
    assert json.loads(after_execute[0][1])["type"] == "task_executing"
    assert any(f.id > status.id for f in conv.replies)  # the status request's own reply

    async with serving(played, wait_for_client=True) as server, client(url(server)) as ws:
        assert conv.hello is not None and await recv(ws) == wire(conv.hello)
        await nothing_yet(ws)  # every reply followed the spawn
        assert await ask(ws, {"type": "list_sessions"}) == {"type": "sessions_list", "sessions": []}

        # The client's own spawn (its own bytes) releases what followed the recorded one.
        await ws.send(json.dumps(spawn_request("vp_7", "Implement feature X")))
        assert [await recv(ws) for _ in before_execute] == before_execute
        spawned = json.loads(before_execute[-1][1])["session"]
        # The state as of now; the question also claims the recorded one (see below).
        answer = await ask(ws, {"type": "session_status", "payload": {"sessionId": sid}})
        assert answer == {"type": "session_status_update", "session": spawned}

        # Another task is not the recorded one: task_executing does not come.
        other = {"type": "execute_task", "payload": {"sessionId": sid, "task": "Other"}}
        await ws.send(json.dumps(other))
        await nothing_yet(ws)
        task = {"type": "execute_task", "payload": {"sessionId": sid, "task": "Fix it"}}
        await ws.send(json.dumps(task))
        # Then the rest, including the reply to the status question asked earlier.
        assert [await recv(ws) for _ in after_execute] == after_execute
        assert await ask(ws, {"type": "ping"}) == {"type": "pong"}


async def test_without_loop_the_replay_is_played_through_once(
    recorded: Recorded, played: Recorded_
) -> None:
    conv, sid = recorded.conversation, recorded.session
    assert conv.hello is not None
    hello, replies = wire(conv.hello), [wire(f) for f in conv.replies]
    requests = [r.data.decode() for r in conv.requests]
    status = {"type": "session_status", "payload": {"sessionId": sid}}
    async with serving(played, wait_for_client=True) as server:
        async with client(url(server)) as first:
            assert await recv(first) == hello
            async with client(url(server)) as second:
                # A second client meanwhile: the hello, then answers only.
                assert await recv(second) == hello
                await second.send(requests[0])
                assert await ask(second, {"type": "ping"}) == {"type": "pong"}
        # The first client left before the end: the next one gets it from the start.
        async with client(url(server)) as third:
            assert await recv(third) == hello
            assert (await ask(third, status))["type"] == "error"  # nothing shown yet
            for request in requests[:2]:
                await third.send(request)
            assert [await recv(third) for _ in replies] == replies
        # Played through: later clients see where it ended.
        async with client(url(server)) as fourth:
            assert await recv(fourth) == hello
            final = [f for f in conv.replies if f.type == "session_status_update"][-1]
            await fourth.send(json.dumps(status))
            assert await recv(fourth) == wire(final)


async def test_with_loop_every_client_gets_the_whole_replay(
    recorded: Recorded, played: Recorded_
) -> None:
    conv = recorded.conversation
    assert conv.hello is not None
    expected = [wire(conv.hello)] + [wire(f) for f in conv.replies]
    async with serving(played, loop=True) as server:
        async with client(url(server)) as a, client(url(server)) as b:
            for ws in (a, b):
                assert [await recv(ws) for _ in expected] == expected
        async with client(url(server)) as c:
            assert [await recv(c) for _ in expected] == expected


async def test_the_token_rule_and_health(recorded: Recorded) -> None:
    conv = recorded.conversation
    assert conv.hello is not None
    async with serving(conv, token="s3cret") as server:
        for headers, error in (
            ({}, "credentials_missing"),
            ({"Authorization": "Bearer wrong"}, "proxy_token_invalid"),
        ):
            with pytest.raises(InvalidStatus) as caught:
                async with connect(url(server), additional_headers=headers):
                    pass
            response = caught.value.response
            assert response.status_code == 401
            assert json.loads(response.body or b"") == {"error": error}
        async with client(url(server, "?token=s3cret")) as ws:
            assert await recv(ws) == wire(conv.hello)
        bearer = {"Authorization": "Bearer s3cret"}
        async with client(url(server), additional_headers=bearer) as ws:
            assert await recv(ws) == wire(conv.hello)
        status, body = await http_get_health(url(server), None)
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "healthy"
        assert isinstance(health["uptime"], int) and isinstance(health["activeSessions"], int)


async def test_ctrl_c_stops_the_cli_quietly(recorded: Recorded) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recorder",
        "replay",
        "--database",
        str(recorded.path),
        recorded.session,
        "--serve",
        "127.0.0.1:0",
        "--instant",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = (await proc.stderr.readline()).decode()
        assert f"replaying {recorded.session} as a daemon on ws://127.0.0.1:" in line, line
        conv = recorded.conversation
        async with client(line.split()[-1]) as ws:
            for _ in range(1 + len(conv.replies)):  # a client that reads what it is sent
                await recv(ws)
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(TIMEOUT):
                _, err = await proc.communicate()
        assert ws.close_code == 1001  # going away
        assert proc.returncode == 0, err
        assert b"Traceback" not in err, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- timing, and frames a JSON recording never has ----------------------------------

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
