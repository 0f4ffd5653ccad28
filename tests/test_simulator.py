"""The simulated daemon, checked over real sockets against the real daemon's frames."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus

from recorder.simulator import (
    HEALTH_CHECK_FRAME,
    JournalEntry,
    Simulator,
    SimulatorOptions,
    authenticate,
    firehose_template,
    iso_from_ms,
    plan_task,
    serve,
)

TIMEOUT = 5.0
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SESSION_ID = re.compile(r"^session_(\d{13})_[0-9a-z]{9}$")
SESSION_KEYS = [
    "id",
    "orchestratorId",
    "task",
    "type",
    "status",
    "startedAt",
    "memoryContext",
    "metrics",
]
TASK_KEYS = ["id", "description", "type", "priority", "status", "createdAt", "updatedAt"]
METRIC_KEYS = [
    "tokensUsed",
    "duration",
    "tasksCompleted",
    "errorsEncountered",
    "averageResponseTime",
]
SPAWN: dict[str, Any] = {
    "type": "spawn_session",
    "payload": {
        "orchestratorId": "vp_123",
        "task": {
            "type": "code",
            "description": "Implement feature X",
            "priority": "high",
            "status": "pending",
        },
        "sessionType": "claude-code",
        "memoryProfile": "default",
    },
}
STREAM_BODY = {"stream_chunk", "tool_call_start", "tool_call_result"}


def options(**overrides: Any) -> SimulatorOptions:
    settings: dict[str, Any] = {"port": 0, "chunk_delay": 0.0, "seed": 1234}
    settings.update(overrides)
    return SimulatorOptions(**settings)


async def recv_text(ws: ClientConnection) -> str:
    async with asyncio.timeout(TIMEOUT):
        message = await ws.recv()
    assert isinstance(message, str)
    return message


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(await recv_text(ws))
    assert isinstance(frame, dict)
    return frame


async def open_client(sim: Simulator, **kwargs: Any) -> ClientConnection:
    ws = await connect(sim.url, max_size=None, **kwargs)
    assert await recv_text(ws) == HEALTH_CHECK_FRAME
    return ws


async def recv_until(ws: ClientConnection, last_type: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = await recv_json(ws)
        frames.append(frame)
        if frame["type"] == last_type:
            return frames


async def expect_close(ws: ClientConnection) -> ConnectionClosed:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv()
    return info.value


async def http_get(port: int, path: str) -> tuple[int, Headers, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    async with asyncio.timeout(TIMEOUT):
        raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = Headers([(k, v) for k, v in (line.split(": ", 1) for line in lines)])
    return int(status_line.split()[1]), headers, body


def check_session_shape(session: dict[str, Any]) -> None:
    ended = session["status"] in {"completed", "failed", "stopped"}
    assert list(session) == SESSION_KEYS + (["endedAt"] if ended else [])
    match = SESSION_ID.match(session["id"])
    assert match is not None
    assert list(session["task"]) == TASK_KEYS
    # As in the real daemon, the task id and the dates share the session id's clock.
    assert session["task"]["id"] == f"task_{match.group(1)}"
    assert session["task"]["createdAt"] == session["startedAt"] == iso_from_ms(int(match[1]))
    assert list(session["memoryContext"]) == ["scratchpad", "episodic", "semantic"]
    assert list(session["metrics"]) == METRIC_KEYS
    for entry in session["memoryContext"]["episodic"]:
        assert list(entry) == ["id", "content", "timestamp", "type", "metadata"]
        assert re.match(r"^memory_\d{13}_[0-9a-z]{9}$", entry["id"])
        assert entry["content"].startswith("Task: ")
        assert ISO.match(entry["timestamp"])
    for key in ("startedAt", "endedAt"):
        if key in session:
            assert ISO.match(session[key])


def check_stream(frames: list[dict[str, Any]], session_id: str) -> None:
    """stream_start, chunks and tool calls with indices counting up, stream_end."""
    assert frames[0] == {"type": "stream_start", "data": {"sessionId": session_id}}
    assert frames[-1] == {"type": "stream_end", "data": {"sessionId": session_id}}
    body = frames[1:-1]
    assert {frame["type"] for frame in body} <= STREAM_BODY
    chunks = [frame for frame in body if frame["type"] == "stream_chunk"]
    assert [c["data"]["metadata"] for c in chunks] == [
        {"type": "text", "index": i} for i in range(len(chunks))
    ]
    for chunk in chunks:
        assert list(chunk["data"]) == ["sessionId", "chunk", "metadata"]
        assert chunk["data"]["sessionId"] == session_id
    tools = [frame for frame in body if frame["type"] != "stream_chunk"]
    for start, result in zip(tools[::2], tools[1::2], strict=True):
        assert start["type"] == "tool_call_start"
        assert result["type"] == "tool_call_result"
        assert list(start["data"]) == [
            "sessionId",
            "toolName",
            "toolInput",
            "status",
            "timestamp",
        ]
        assert list(result["data"]) == ["sessionId", "toolName", "status", "result", "timestamp"]
        assert start["data"]["status"] == "started"
        assert result["data"]["toolName"] == start["data"]["toolName"]
        assert ISO.match(result["data"]["timestamp"])


# --------------------------------------------------------------------------- basics


async def test_health_check_first_then_ping_pong() -> None:
    async with Simulator(options()) as sim, connect(sim.url) as ws:
        assert await recv_text(ws) == '{"type":"health_check_response","healthy":true}'
        await ws.send('{"type":"ping","extra":1}')
        assert await recv_text(ws) == '{"type":"pong"}'
        assert sim.connection_count == 1
        assert sim.url == f"ws://127.0.0.1:{sim.port}"


async def test_errors_for_bad_input_never_break_the_connection() -> None:
    invalid = '{"type":"error","error":"Invalid message format"}'
    async with Simulator(options()) as sim:
        ws = await open_client(sim)
        cases = [
            (
                '{"type":"frobnicate"}',
                '{"type":"error","error":"Unknown message type: frobnicate"}',
            ),
            ("not json", invalid),
            ("[1,2]", invalid),
            ("null", invalid),
            ("{}", invalid),
            ('{"type":5}', invalid),
            ('{"type":"spawn_session"}', invalid),
            ('{"type":"spawn_session","payload":{"task":"x"}}', invalid),
            ('{"type":"execute_task","payload":{"sessionId":1}}', invalid),
            ('{"type":"session_status","payload":[]}', invalid),
            ("[" * 100_000, invalid),
            ('{"type":"spawn_session","payload":' + "[" * 50_000 + "]" * 50_000 + "}", invalid),
        ]
        for message, reply in cases:
            await ws.send(message)
            assert await recv_text(ws) == reply, message
        await ws.send(b"\x00\x01binary")
        assert await recv_text(ws) == invalid
        await ws.send('{"type":"ping"}')
        assert await recv_text(ws) == '{"type":"pong"}'
        await ws.close()


async def test_lone_surrogate_in_task_text_is_escaped_not_fatal() -> None:
    async with Simulator(options()) as sim:
        ws = await open_client(sim)
        payload = '{"type":"execute_task","payload":{"sessionId":"nope","task":"\\ud800"}}'
        await ws.send(payload)
        assert await recv_text(ws) == (
            '{"type":"task_executing","sessionId":"nope","taskId":"\\ud800"}'
        )
        frame = await recv_json(ws)
        assert frame["type"] == "task_failed"
        assert frame["error"] == "Session not found: nope"
        await ws.close()


async def test_daemon_status_matches_real_shape() -> None:
    async with Simulator(options()) as sim:
        ws = await open_client(sim)
        await ws.send('{"type":"daemon_status"}')
        frame = await recv_json(ws)
        assert list(frame) == ["type", "status"]
        assert frame["type"] == "daemon_status_update"
        status = frame["status"]
        assert list(status) == [
            "status",
            "uptime",
            "activeSessions",
            "queuedTasks",
            "metrics",
            "subsystems",
        ]
        assert isinstance(status["uptime"], int)
        assert status["metrics"] == {
            "totalSessionsSpawned": 0,
            "totalTasksProcessed": 0,
            "totalTokensUsed": 0,
            "averageSessionDuration": 0,
            "activeSessions": 0,
            "successRate": 1,
        }
        assert list(status["subsystems"])[:4] == [
            "websocket",
            "sessionManager",
            "memoryManager",
            "llmClient",
        ]
        assert len(status["subsystems"]) == 16
        for subsystem in status["subsystems"].values():
            assert list(subsystem) == ["status", "lastCheck"]
            assert ISO.match(subsystem["lastCheck"])
        # JavaScript prints 1, not 1.0: the raw text must match.
        await ws.send('{"type":"daemon_status"}')
        assert '"successRate":1}' in await recv_text(ws)
        await ws.send('{"type":"list_sessions"}')
        assert await recv_text(ws) == '{"type":"sessions_list","sessions":[]}'
        await ws.close()


async def test_status_interval_broadcasts_daemon_status() -> None:
    async with Simulator(options(status_interval=0.02)) as sim:
        ws = await open_client(sim)
        assert (await recv_json(ws))["type"] == "daemon_status_update"
        assert (await recv_json(ws))["type"] == "daemon_status_update"
        await ws.close()


# --------------------------------------------------------------------------- sessions


async def test_spawn_session_streams_to_requester_and_broadcasts_status() -> None:
    async with Simulator(options(fail_rate=0.0, chunks_per_task=(4, 8))) as sim:
        requester = await open_client(sim)
        passive = await open_client(sim)
        await requester.send(json.dumps(SPAWN))
        frames = await recv_until(requester, "session_spawned")

        running, *stream, final, spawned = frames
        assert running["type"] == "session_status_update"
        assert running["session"]["status"] == "running"
        assert "endedAt" not in running["session"]
        check_session_shape(running["session"])
        session_id = running["session"]["id"]
        assert running["session"]["orchestratorId"] == "vp_123"
        assert running["session"]["task"]["description"] == "Implement feature X"
        check_stream(stream, session_id)
        assert 4 <= sum(f["type"] == "stream_chunk" for f in stream) <= 8

        assert final["type"] == "session_status_update"
        assert final["session"]["status"] == "completed"
        check_session_shape(final["session"])
        # session_spawned comes last and already carries the final status.
        assert spawned == {"type": "session_spawned", "session": final["session"]}
        memory = spawned["session"]["memoryContext"]["episodic"]
        text = "".join(f["data"]["chunk"] for f in stream if f["type"] == "stream_chunk")
        assert memory[0]["content"] == f"Task: Implement feature X\nResult: {text}"
        assert memory[0]["metadata"]["success"] is True
        assert spawned["session"]["metrics"]["tasksCompleted"] == 1

        # The passive client sees the two broadcasts and nothing else.
        first = await recv_json(passive)
        second = await recv_json(passive)
        assert first == running
        assert second == final
        await passive.send('{"type":"ping"}')
        assert await recv_text(passive) == '{"type":"pong"}'

        assert sim.sessions[session_id].status == "completed"
        assert sim.sessions[session_id].to_json() == final["session"]
        await requester.close()
        await passive.close()


async def test_failed_spawn_ends_failed() -> None:
    async with Simulator(options(fail_rate=1.0)) as sim:
        ws = await open_client(sim)
        await ws.send(json.dumps(SPAWN))
        frames = await recv_until(ws, "session_spawned")
        session = frames[-1]["session"]
        assert session["status"] == "failed"
        assert session["metrics"]["errorsEncountered"] == 1
        entry = session["memoryContext"]["episodic"][0]
        assert entry["content"] == "Task: Implement feature X\nResult: "
        assert entry["metadata"]["success"] is False
        assert frames[-2] == {"type": "session_status_update", "session": session}
        await ws.close()


async def test_execute_task_on_finished_session_fails_like_the_real_daemon() -> None:
    async with Simulator(options(fail_rate=0.0)) as sim:
        ws = await open_client(sim)
        await ws.send(json.dumps(SPAWN))
        session_id = (await recv_until(ws, "session_spawned"))[-1]["session"]["id"]
        request = {
            "type": "execute_task",
            "payload": {
                "sessionId": session_id,
                "task": "Second task while running",
                "context": {},
                "streamResponse": True,
            },
        }
        await ws.send(json.dumps(request))
        assert await recv_text(ws) == (
            f'{{"type":"task_executing","sessionId":"{session_id}",'
            '"taskId":"Second task while running"}'
        )
        assert await recv_text(ws) == (
            f'{{"type":"task_failed","sessionId":"{session_id}",'
            '"taskId":"Second task while running",'
            f'"error":"Session {session_id} is not running (status: completed)"}}'
        )
        await ws.close()


async def test_execute_task_while_running_streams_then_completes() -> None:
    opts = options(fail_rate=0.0, chunk_delay=0.02, chunks_per_task=(10, 10))
    async with Simulator(opts) as sim:
        ws = await open_client(sim)
        await ws.send(json.dumps(SPAWN))
        running = await recv_json(ws)
        session_id = running["session"]["id"]
        task = {"sessionId": session_id, "task": "Second task while running"}
        await ws.send(json.dumps({"type": "execute_task", "payload": task}))
        seen: list[dict[str, Any]] = []
        while not {"task_completed", "session_spawned"} <= {f["type"] for f in seen}:
            seen.append(await recv_json(ws))
        types = [frame["type"] for frame in seen]
        assert "task_executing" in types
        assert types.index("task_executing") < types.index("task_completed")
        assert types.count("stream_start") == types.count("stream_end") == 2
        completed = seen[types.index("task_completed")]
        assert json.dumps(completed, separators=(",", ":")) == (
            f'{{"type":"task_completed","sessionId":"{session_id}",'
            '"taskId":"Second task while running"}'
        )
        assert sim.sessions[session_id].tasks_completed == 2
        await ws.close()


async def test_session_status_stop_and_list() -> None:
    async with Simulator(options()) as sim:
        ws = await open_client(sim)
        await ws.send('{"type":"session_status","payload":{"sessionId":"session_x"}}')
        assert await recv_text(ws) == '{"type":"error","error":"Session not found: session_x"}'
        await ws.send('{"type":"stop_session","payload":{"sessionId":"session_x"}}')
        assert await recv_text(ws) == '{"type":"error","error":"Session not found: session_x"}'

        await ws.send(json.dumps(SPAWN))
        spawned = (await recv_until(ws, "session_spawned"))[-1]["session"]
        status_request = {"type": "session_status", "payload": {"sessionId": spawned["id"]}}
        await ws.send(json.dumps(status_request))
        assert await recv_json(ws) == {"type": "session_status_update", "session": spawned}

        await ws.send(json.dumps({"type": "stop_session", "payload": {"sessionId": spawned["id"]}}))
        stopped = (await recv_json(ws))["session"]
        assert stopped["status"] == "stopped"
        assert stopped["endedAt"] == spawned["endedAt"]
        await ws.send('{"type":"list_sessions"}')
        listing = await recv_json(ws)
        assert listing == {"type": "sessions_list", "sessions": [stopped]}
        await ws.close()


async def test_stop_session_while_running_cuts_the_stream() -> None:
    opts = options(fail_rate=0.0, chunk_delay=0.05, chunks_per_task=(40, 40))
    async with Simulator(opts) as sim:
        ws = await open_client(sim)
        await ws.send(json.dumps(SPAWN))
        session_id = (await recv_json(ws))["session"]["id"]
        await ws.send(json.dumps({"type": "stop_session", "payload": {"sessionId": session_id}}))
        frames = await recv_until(ws, "session_spawned")
        statuses = [f["session"]["status"] for f in frames if "session" in f]
        assert statuses == ["stopped", "stopped"]
        assert frames[-2]["type"] == "stream_end"
        assert sum(f["type"] == "stream_chunk" for f in frames) < 40
        await ws.close()


async def test_autonomous_sessions_reach_passive_clients_as_status_updates() -> None:
    opts = options(sessions=3, session_interval=0.01, wait_for_client=True, fail_rate=0.5)
    async with Simulator(opts) as sim:
        ws = await open_client(sim)
        frames = [await recv_json(ws) for _ in range(6)]
        await sim.wait_sessions_done(TIMEOUT)
        assert {frame["type"] for frame in frames} == {"session_status_update"}
        by_session: dict[str, list[str]] = {}
        for frame in frames:
            check_session_shape(frame["session"])
            by_session.setdefault(frame["session"]["id"], []).append(frame["session"]["status"])
        assert len(by_session) == 3
        for statuses in by_session.values():
            assert statuses[0] == "running"
            assert statuses[1] in {"completed", "failed"}
        assert all(session.terminal for session in sim.sessions.values())
        await ws.send('{"type":"ping"}')
        assert await recv_text(ws) == '{"type":"pong"}'
        await ws.close()


async def collect_seeded_run(seed: int) -> tuple[list[Any], list[Any]]:
    """What a seed decides, with ids and clock readings left out."""
    opts = options(seed=seed, sessions=3, session_interval=0, wait_for_client=True, fail_rate=0.5)
    async with Simulator(opts) as sim:
        ws = await open_client(sim)
        broadcasts = [await recv_json(ws) for _ in range(6)]
        await sim.wait_sessions_done(TIMEOUT)
        order = list(sim.sessions)
        autonomous = [
            (
                order.index(frame["session"]["id"]),
                frame["type"],
                frame["session"]["status"],
                frame["session"]["orchestratorId"],
                frame["session"]["task"]["description"],
                [
                    (entry["content"], entry["metadata"]["tokensUsed"])
                    for entry in frame["session"]["memoryContext"]["episodic"]
                ],
            )
            for frame in broadcasts
        ]
        await ws.send(json.dumps(SPAWN))
        spawn_frames = await recv_until(ws, "session_spawned")
        requested = [
            (
                frame["type"],
                frame.get("data", {}).get("chunk"),
                frame.get("data", {}).get("toolName"),
            )
            for frame in spawn_frames
        ]
        requested.append(spawn_frames[-1]["session"]["status"])
        await ws.close()
    return sorted(autonomous), requested


async def test_same_seed_same_sessions_outcomes_and_texts() -> None:
    first = await collect_seeded_run(99)
    second = await collect_seeded_run(99)
    assert first == second
    assert any(entry[5] and entry[5][0][0].endswith(" ") for entry in first[0])
    other = await collect_seeded_run(100)
    assert other != first


def test_plan_task_is_a_pure_function_of_the_rng() -> None:
    one = plan_task(random.Random(5), chunks=(3, 12), chunk_delay=0.05, fail_rate=0.2)
    two = plan_task(random.Random(5), chunks=(3, 12), chunk_delay=0.0, fail_rate=0.2)
    # The pacing changes only the delays, never the content.
    assert one.text == two.text
    assert [type(s) for s in one.steps] == [type(s) for s in two.steps]
    assert all(step.delay == 0 for step in two.steps)
    assert plan_task(random.Random(5), chunks=(0, 0)).steps == ()


# --------------------------------------------------------------------------- HTTP and auth


async def test_health_endpoint_and_plain_http() -> None:
    async with Simulator(options()) as sim:
        status, headers, body = await http_get(sim.port, "/health")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        health = json.loads(body)
        assert list(health) == ["status", "uptime", "activeSessions"]
        assert health["status"] == "healthy"
        assert isinstance(health["uptime"], int)
        assert health["activeSessions"] == 0
        status, _, _ = await http_get(sim.port, "/")
        assert status == 426  # websockets' own answer to a non-WebSocket request
        assert sim.total_connections == 0


async def rejected(url: str, **kwargs: Any) -> tuple[int, Any, str]:
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(TIMEOUT):
            await connect(url, **kwargs)
    response = info.value.response
    return response.status_code, json.loads(response.body), response.headers["Content-Type"]


async def test_token_auth() -> None:
    async with Simulator(options(token="s3cret")) as sim:
        missing = await rejected(sim.url)
        assert missing == (401, {"error": "credentials_missing"}, "application/json")
        wrong = await rejected(sim.url, additional_headers={"Authorization": "Bearer nope"})
        assert wrong == (401, {"error": "jwt_invalid"}, "application/json")
        assert (await rejected(sim.url + "/?token=nope"))[1] == {"error": "jwt_invalid"}
        ws = await open_client(sim, additional_headers={"Authorization": "Bearer s3cret"})
        await ws.close()
        async with connect(sim.url + "/?token=s3cret") as by_query:
            assert await recv_text(by_query) == HEALTH_CHECK_FRAME
        assert sim.total_connections == 2


async def test_api_key_auth() -> None:
    async with Simulator(options(api_key="k3y")) as sim:
        assert (await rejected(sim.url))[1] == {"error": "credentials_missing"}
        wrong = await rejected(sim.url, additional_headers={"x-api-key": "bad"})
        assert wrong == (401, {"error": "api_key_invalid"}, "application/json")
        async with connect(sim.url, additional_headers={"X-API-Key": "k3y"}) as ws:
            assert await recv_text(ws) == HEALTH_CHECK_FRAME
        async with connect(sim.url + "/?apiKey=k3y") as ws:
            assert await recv_text(ws) == HEALTH_CHECK_FRAME


def test_authenticate_rules() -> None:
    empty = Headers()
    assert authenticate(None, None, empty, {}) is None
    assert authenticate("t", None, Headers([("Authorization", "bearer t")]), {}) is None
    assert authenticate("t", "k", empty, {"apiKey": ["k"]}) is None
    assert authenticate("t", "k", empty, {"apiKey": ["x"]}) == "api_key_invalid"
    assert authenticate("t", None, Headers([("Authorization", "Basic dTpw")]), {}) == (
        "credentials_missing"
    )


async def test_connection_limit_answers_429() -> None:
    async with Simulator(options(max_connections=2)) as sim:
        first = await open_client(sim)
        second = await open_client(sim)
        over = await rejected(sim.url)
        assert over == (429, {"error": "connection_limit_exceeded"}, "application/json")
        # /health is not a connection and stays reachable.
        assert (await http_get(sim.port, "/health"))[0] == 200
        await first.close()
        await second.close()


async def test_token_expiry_closes_with_4001() -> None:
    async with Simulator(options(token="s3cret", expire_token_after=0.05)) as sim:
        ws = await open_client(sim, additional_headers={"Authorization": "Bearer s3cret"})
        closed = await expect_close(ws)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (4001, "Token expired")


# --------------------------------------------------------------------------- misbehaviour


async def test_forced_disconnect_after_n_frames_within_budget() -> None:
    async with Simulator(options(disconnect_after=3, disconnects=1)) as sim:
        ws = await open_client(sim)  # frame 1
        await ws.send('{"type":"ping"}')
        await ws.send('{"type":"ping"}')
        await ws.send('{"type":"ping"}')
        assert await recv_text(ws) == '{"type":"pong"}'  # frame 2
        assert await recv_text(ws) == '{"type":"pong"}'  # frame 3, then the close
        closed = await expect_close(ws)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1012, "Service restart")
        assert sim.forced_disconnects == 1

        # The budget is spent: the next connection lives on.
        again = await open_client(sim)
        for _ in range(5):
            await again.send('{"type":"ping"}')
            assert await recv_text(again) == '{"type":"pong"}'
        assert sim.forced_disconnects == 1
        sent_on_first = [e for e in sim.journal if e.conn == 1 and e.direction == "sent"]
        assert len(sent_on_first) == 3
        await again.close()


async def test_firehose_sends_every_frame_in_order() -> None:
    count = 5000
    async with Simulator(options(firehose=count, firehose_size=180)) as sim:
        ws = await open_client(sim)
        frames = [await recv_text(ws) for _ in range(count + 1)]
        session_id = None
        for index, text in enumerate(frames[:-1]):
            assert 175 <= len(text) <= 185
            frame = json.loads(text)
            assert frame["type"] == "stream_chunk"
            assert frame["data"]["metadata"] == {"type": "text", "index": index}
            session_id = session_id or frame["data"]["sessionId"]
            assert frame["data"]["sessionId"] == session_id
        assert session_id is not None and session_id.startswith("session_firehose_")
        end = {"type": "stream_end", "data": {"sessionId": session_id}}
        assert json.loads(frames[-1]) == end
        sent = [e.data for e in sim.journal if e.direction == "sent"]
        assert sent == [HEALTH_CHECK_FRAME, *frames]
        await ws.close()


async def test_firehose_obeys_forced_disconnect() -> None:
    async with Simulator(options(firehose=100, disconnect_after=50, disconnects=1)) as sim:
        ws = await open_client(sim)
        indices = []
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    indices.append(json.loads(await ws.recv())["data"]["metadata"]["index"])
        assert indices == list(range(49))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1012


async def test_broadcast_raw_sends_exact_data() -> None:
    async with Simulator(options()) as sim:
        one = await open_client(sim)
        two = await open_client(sim)
        await sim.broadcast_raw("not json at all")
        await sim.broadcast_raw(b"\x00\xffbinary")
        for ws in (one, two):
            assert await recv_text(ws) == "not json at all"
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == b"\x00\xffbinary"
        # Invalid UTF-8 in a TEXT frame: a strict client must fail the connection.
        await sim.broadcast_raw(b"\xc3\x28", text=True)
        closed = await expect_close(one)
        assert closed.sent is not None and closed.sent.code == 1007
        sent = [(e.conn, e.data) for e in sim.journal if e.direction == "sent"]
        assert sent[-2:] == [(1, b"\xc3\x28"), (2, b"\xc3\x28")]
        await two.close()


async def test_disconnect_all() -> None:
    async with Simulator(options()) as sim:
        ws = await open_client(sim)
        await sim.disconnect_all(4000, "bye")
        closed = await expect_close(ws)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (4000, "bye")


# --------------------------------------------------------------------------- journal


async def test_journal_records_both_directions_exactly(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    async with Simulator(options(journal_path=str(path))) as sim:
        ws = await open_client(sim)
        await ws.send('{"type":"ping"}')
        await recv_text(ws)
        await ws.send("garbage")
        await recv_text(ws)
        await ws.send(b"\x01\x02")
        await recv_text(ws)
        await ws.close()
        invalid = '{"type":"error","error":"Invalid message format"}'
        expected = [
            JournalEntry(1, "sent", HEALTH_CHECK_FRAME),
            JournalEntry(1, "received", '{"type":"ping"}'),
            JournalEntry(1, "sent", '{"type":"pong"}'),
            JournalEntry(1, "received", "garbage"),
            JournalEntry(1, "sent", invalid),
            JournalEntry(1, "received", b"\x01\x02"),
            JournalEntry(1, "sent", invalid),
        ]
        assert sim.journal == expected
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines[0] == {"conn": 1, "direction": "sent", "text": HEALTH_CHECK_FRAME}
        assert lines[5] == {
            "conn": 1,
            "direction": "received",
            "b64": base64.b64encode(b"\x01\x02").decode(),
        }
        assert len(lines) == len(expected)


async def test_wait_connections_counts_every_accepted_connection() -> None:
    async with Simulator(options()) as sim:
        waiter = asyncio.create_task(sim.wait_connections(2, TIMEOUT))
        first = await open_client(sim)
        assert not waiter.done()
        second = await open_client(sim)
        await waiter
        assert sim.total_connections == 2
        await first.close()
        await second.close()
        with pytest.raises(TimeoutError):
            await sim.wait_connections(3, 0.01)


# --------------------------------------------------------------------------- shutdown


async def test_stop_closes_with_1000_server_shutting_down() -> None:
    sim = Simulator(options(sessions=1, chunk_delay=0.05, chunks_per_task=(50, 50)))
    await sim.start()
    ws = await open_client(sim)
    await sim.stop()
    closed = await expect_close(ws)
    assert isinstance(closed, ConnectionClosedOK)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "Server shutting down")
    await sim.stop()  # idempotent


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need main thread"
)
async def test_serve_stops_cleanly_on_sigterm() -> None:
    ports: asyncio.Queue[int] = asyncio.Queue()
    runner = asyncio.create_task(serve(options(), ready=ports.put_nowait))
    async with asyncio.timeout(TIMEOUT):
        port = await ports.get()
    async with connect(f"ws://127.0.0.1:{port}") as ws:
        assert await recv_text(ws) == HEALTH_CHECK_FRAME
        os.kill(os.getpid(), signal.SIGTERM)
        closed = await expect_close(ws)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "Server shutting down")
    async with asyncio.timeout(TIMEOUT):
        await runner


# --------------------------------------------------------------------------- helpers


def test_iso_from_ms_matches_javascript() -> None:
    assert iso_from_ms(1795692537464) == "2026-11-26T11:28:57.464Z"
    assert iso_from_ms(0) == "1970-01-01T00:00:00.000Z"


def test_firehose_template_size() -> None:
    prefix, suffix = firehose_template("session_firehose_1_abcdefghi", 180, 1000)
    assert len(f"{prefix}999{suffix}") == 180
    frame = json.loads(f"{prefix}7{suffix}")
    assert frame["data"]["metadata"] == {"type": "text", "index": 7}
