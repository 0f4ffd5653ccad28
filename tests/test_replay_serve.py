"""``recorder replay --serve``: a recorded session played to a real client, as the daemon.
tests/test_replay_serve_frames.py holds conversations made for the purpose (pauses,
frames that are not JSON text, a long session)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from recorder.capture.handshake import http_get_health
from recorder.cli import cli
from recorder.db.recordings import Recordings
from recorder.protocol.frames import IN
from recorder.replay import source
from recorder.replay.serve import Recorded as Recorded_
from recorder.replay.source import Conversation
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import proxy_recording_config, running
from tests.helpers import frame_bytes, query, wait_until
from tests.postmortem_recording import spawn_request
from tests.serve_client import (
    TIMEOUT,
    ask,
    client,
    nothing_yet,
    recv,
    serving,
    url,
    wire,
)


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
        config = proxy_recording_config(tmp, sim.url, path)
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
    recorded: Recorded, played: Recorded_, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="recorder.replay")
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

        # A task for another session is not the recorded one: task_executing does not come.
        elsewhere = {
            "type": "execute_task",
            "payload": {"sessionId": "session_x", "task": "Fix it"},
        }
        await ws.send(json.dumps(elsewhere))
        await nothing_yet(ws)
        # The client's own task text for the same session is: matched by type and ids.
        task = {"payload": {"task": "Something else entirely", "sessionId": sid}}
        await ws.send(json.dumps({"type": "execute_task", **task}))
        # Then the rest, including the reply to the status question asked earlier.
        assert [await recv(ws) for _ in after_execute] == after_execute
        assert await ask(ws, {"type": "ping"}) == {"type": "pong"}
    # Each wait said once what it waits for: type and ids, never the task's text.
    waits = [r.getMessage() for r in caplog.records if r.name == "recorder.replay.serve"]
    assert waits == [
        "waiting for the client's spawn_session orchestratorId=vp_7 (recorded request 1)",
        f"waiting for the client's execute_task sessionId={sid} (recorded request 2)",
    ]


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
