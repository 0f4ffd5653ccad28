"""The simulated daemon's sessions, checked over real sockets against the real daemon's
frames: spawn, stream, tasks, status, stop, the autonomous sessions, and what a seed
decides."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from recorder.simulator import Simulator, iso_from_ms, plan_task
from tests.sim_client import (
    ISO,
    TIMEOUT,
    open_client,
    options,
    recv_json,
    recv_text,
    recv_until,
)

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
