"""The recording proxy over real sockets: transparent to the UI, recorded both ways.
Who it admits is tests/test_proxy_auth.py; what it refuses, tests/test_proxy_refusals.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, cast

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from recorder.capture.admission import relay_close, upstream_url
from recorder.capture.wire import RecordingClientConnection
from recorder.config import Config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running
from tests.helpers import query, wait_until
from tests.proxy_peers import (
    T,
    Upstream,
    closed_by_proxy,
    closed_conversations,
    proxy_port,
    proxy_url,
)


def spawn(description: str = "Implement feature X") -> str:
    return json.dumps(
        {
            "type": "spawn_session",
            "payload": {
                "orchestratorId": "vp_123",
                "task": {
                    "type": "code",
                    "description": description,
                    "priority": "high",
                    "status": "pending",
                },
                "sessionType": "claude-code",
                "memoryProfile": "default",
            },
        }
    )


async def converse(url: str, **kwargs: Any) -> list[str]:
    """A UI's conversation: spawn a session and read until session_spawned."""
    got: list[str] = []
    async with connect(url, **kwargs) as ws:
        got.append(str(await ws.recv()))
        await ws.send(spawn())
        async with asyncio.timeout(T):
            while True:
                frame = str(await ws.recv())
                got.append(frame)
                if json.loads(frame)["type"] == "session_spawned":
                    break
    return got


# --- pure parts -----------------------------------------------------------------


def test_upstream_url() -> None:
    assert upstream_url("ws://d:8787", "/", [("token", "t")]) == "ws://d:8787/?token=t"
    assert upstream_url("ws://d:8787/ws?v=1", "/", []) == "ws://d:8787/ws?v=1"
    assert upstream_url("wss://d/ws", "/other", [("apiKey", "k")]) == "wss://d/other?apiKey=k"


def test_relay_close() -> None:
    from websockets.frames import Close

    assert relay_close(Close(4001, "Token expired"), "lost") == (4001, "Token expired")
    assert relay_close(Close(1000, "Server shutting down"), "lost") == (
        1000,
        "Server shutting down",
    )
    assert relay_close(None, "upstream connection lost") == (1011, "upstream connection lost")
    assert relay_close(Close(1005, ""), "lost") == (1000, "")
    assert relay_close(Close(1006, ""), "lost") == (1011, "lost")


# --- over sockets ---------------------------------------------------------------


async def test_proxied_client_gets_what_a_direct_client_gets(
    make_config: Callable[..., Config],
) -> None:
    opts = SimulatorOptions(port=0, seed=5, chunk_delay=0, fail_rate=0.0)
    # Two simulators with one seed: the same conversation, once direct, once proxied.
    async with Simulator(opts) as twin:
        direct = await converse(twin.url)
    async with Simulator(opts) as sim, running(make_config(sim.url)) as svc:
        await sim.wait_connections(1)  # the passive link
        conns_before = sim.total_connections
        proxied = await converse(proxy_url(svc))
        upstream_conn = conns_before + 1
        sent = [e.data for e in sim.journal if e.conn == upstream_conn and e.direction == "sent"]
        # Exactly the upstream's frames, in order...
        assert proxied == sent[: len(proxied)]
        # ...and the same conversation a direct client has (ids and times differ).
        assert [json.loads(f)["type"] for f in proxied] == [json.loads(f)["type"] for f in direct]
        assert "stream_chunk" in [json.loads(f)["type"] for f in proxied]
        await svc.writer.flush()

        await wait_until(svc, lambda: closed_conversations(svc, 1))
        rows = await query(
            svc,
            "select * from frames where connection_id = (select id from connections where role = 'proxy') order by seq",
        )
        ins = [r.payload for r in rows if r.direction == "in"]
        outs = [r.payload for r in rows if r.direction == "out"]
        assert ins == sent
        assert outs == [
            e.data for e in sim.journal if e.conn == upstream_conn and e.direction == "received"
        ]
        sid = json.loads(proxied[-1])["session"]["id"]
        # The streamed session is in the index with every one of its frames.
        session = (await query(svc, "select * from sessions where id = :sid", sid=sid))[0]
        assert session.status == "completed"
        chunks = await query(
            svc,
            "select count(*) as n from frames where session_id = :sid and type = 'stream_chunk'",
            sid=sid,
        )
        assert chunks[0].n == sum(1 for f in proxied if json.loads(f)["type"] == "stream_chunk")
        # The passive link saw the broadcasts of the same session: one session, two connections.
        both = await query(
            svc, "select distinct connection_id from frames where session_id = :sid", sid=sid
        )
        assert len(both) == 2


async def test_garbage_both_ways_is_relayed_and_recorded_byte_exact(
    make_config: Callable[..., Config],
) -> None:
    garbage: list[tuple[bytes, bool]] = [
        (b"\x00\xff binary", False),
        (b'{"type":"x","nul":"\x00"}', True),
        (b"not json at all", True),
        (b"[" * 50_000 + b"]" * 50_000, True),
        # Last: a daemon built on a strict WebSocket library closes with 1007 on this.
        (b"\xff\xfe not utf-8", True),
    ]
    async with Simulator(SimulatorOptions(port=0)) as sim, running(make_config(sim.url)) as svc:
        await sim.wait_connections(1)
        async with connect(proxy_url(svc), create_connection=RecordingClientConnection) as conn:
            ui = cast(RecordingClientConnection, conn)  # connect() is not generic in its class
            await ui.recv_raw()  # health check
            upstream_conn = sim.total_connections
            for data, text in garbage:
                await sim.broadcast_raw(data, text=text)
            relayed: list[tuple[bytes, bool]] = []
            async with asyncio.timeout(T):
                while len(relayed) < len(garbage):
                    is_text, data = await ui.recv_raw()
                    relayed.append((data, is_text))
            assert relayed == garbage
            for data, text in garbage:
                await ui.send(data, text=text)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(T):
                    while True:
                        await ui.recv_raw()
            assert ui.close_code == 1007  # the daemon's verdict, relayed
        received = [
            e.data for e in sim.journal if e.conn == upstream_conn and e.direction == "received"
        ]
        assert [d if isinstance(d, bytes) else d.encode() for d in received] == [
            g for g, _ in garbage[:-1]
        ]
        await wait_until(svc, lambda: closed_conversations(svc, 1))
        rows = await query(
            svc,
            "select direction, payload, payload_bytes, opcode from frames where connection_id = "
            "(select id from connections where role = 'proxy') order by seq",
        )
        stored = [
            (
                r.direction,
                r.payload.encode() if r.payload is not None else r.payload_bytes,
                r.opcode == 1,
            )
            for r in rows
        ]
        assert [(d, t) for dr, d, t in stored if dr == "out"] == garbage
        assert [(d, t) for dr, d, t in stored if dr == "in"][1 : 1 + len(garbage)] == garbage


async def test_close_codes_and_reasons_are_relayed_both_ways(
    make_config: Callable[..., Config],
) -> None:
    async with Upstream() as up, running(make_config(up.url)) as svc:
        async with connect(proxy_url(svc)) as ui:
            await ui.recv()
            await ui.close(4000, "ui bye")
        await asyncio.wait_for(up.done.wait(), T)
        assert up.closes[-1] == (4000, "ui bye")

        up.done.clear()
        up.close_with = (4001, "Token expired")
        async with connect(proxy_url(svc)) as ui:
            await ui.recv()
            await ui.send("go")
            await closed_by_proxy(ui)
            assert (ui.close_code, ui.close_reason) == (4001, "Token expired")

        await wait_until(svc, lambda: closed_conversations(svc, 2))
        rows = await query(
            svc,
            "select closed_by, close_code, close_reason from connections where role='proxy' order by id",
        )
        assert [tuple(r) for r in rows] == [
            ("client", 4000, "ui bye"),
            ("upstream", 4001, "Token expired"),
        ]


async def test_killing_the_upstream_closes_the_client_which_can_come_back(
    make_config: Callable[..., Config],
) -> None:
    async with Upstream() as up, running(make_config(up.url, proxy={"enabled": True})) as svc:
        up.abort = True
        async with connect(proxy_url(svc)) as ui:
            await ui.recv()
            await ui.send("trigger")
            await closed_by_proxy(ui)
            assert ui.close_code == 1011
        up.abort = False
        async with connect(proxy_url(svc)) as ui:
            await ui.recv()
            await ui.send("still here")
            assert await ui.recv() == "still here"

        await wait_until(svc, lambda: closed_conversations(svc, 2))
        first = (await query(svc, "select * from connections where role='proxy' order by id"))[0]
        assert first.closed_by == "upstream" and first.error == "upstream connection lost"


async def test_subprotocol_is_negotiated_end_to_end(make_config: Callable[..., Config]) -> None:
    async with Upstream(subprotocols=["orch.v1"]) as up, running(make_config(up.url)) as svc:
        async with connect(
            proxy_url(svc), subprotocols=[Subprotocol("orch.v2"), Subprotocol("orch.v1")]
        ) as ui:
            await ui.recv()
            assert ui.subprotocol == "orch.v1"
        _path, headers = up.requests[-1]
        assert "orch.v2" in headers.get("Sec-WebSocket-Protocol", "")


async def test_health_answers_like_the_daemon(make_config: Callable[..., Config]) -> None:
    async def get(port: int) -> tuple[int, dict[str, Any]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    sim = Simulator(SimulatorOptions(port=0))
    await sim.start()
    async with running(make_config(sim.url)) as svc:
        status, body = await get(proxy_port(svc))
        assert status == 200 and body["status"] == "healthy" and "uptime" in body
        assert body["recorder"]["upstreamReachable"] is True
        await sim.stop()
        status, body = await get(proxy_port(svc))
        assert status == 503 and body["recorder"]["upstreamReachable"] is False


async def test_stopping_the_service_closes_proxied_clients_with_1001(
    make_config: Callable[..., Config],
) -> None:
    async with Simulator(SimulatorOptions(port=0)) as sim:
        async with running(make_config(sim.url)) as svc:
            ui = await connect(proxy_url(svc))
            await ui.recv()
        await closed_by_proxy(ui)
        assert (ui.close_code, ui.close_reason) == (1001, "")
