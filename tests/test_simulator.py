"""The simulated daemon's protocol, checked over real sockets against the real daemon's
frames: the hello, ping, bad input, daemon_status. tests/test_simulator_sessions.py
holds its sessions."""

from __future__ import annotations

from websockets.asyncio.client import connect

from recorder.simulator import Simulator
from tests.sim_client import ISO, open_client, options, recv_json, recv_text


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
