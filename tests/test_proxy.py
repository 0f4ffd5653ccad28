"""The recording proxy over real sockets: transparent to the UI, recorded both ways."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, cast

import pytest
import structlog
from click.testing import CliRunner
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from recorder.capture.admission import admit, relay_close, upstream_url
from recorder.capture.wire import RecordingClientConnection
from recorder.cli import cli
from recorder.config import Config, ConfigError, load_config
from recorder.service.lifecycle import Service
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config
from tests.helpers import query, refuse_connections, wait_until

T = 10


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


async def closed_by_proxy(ui: ClientConnection) -> None:
    """Wait (bounded) until the proxy closes this UI connection."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(T):
            while True:
                await ui.recv()


def proxy_port(svc: Service) -> int:
    """The port of the service's proxy (every config in these tests enables it)."""
    assert svc.proxy is not None
    return svc.proxy.port


def proxy_url(svc: Service, path: str = "/") -> str:
    return f"ws://127.0.0.1:{proxy_port(svc)}{path}"


# --- pure parts -----------------------------------------------------------------


def test_admit() -> None:
    h = Headers({"Authorization": "Bearer p-tok"})
    assert admit(None, h, [("a", "1")]).reject is None
    ok = admit("p-tok", h, [("token", "daemon")])
    assert ok.reject is None and ok.strip_authorization and ok.query == [("token", "daemon")]
    via_query = admit(
        "p-tok", Headers({"Authorization": "Bearer daemon"}), [("token", "p-tok"), ("x", "1")]
    )
    assert (
        via_query.reject is None
        and not via_query.strip_authorization
        and via_query.query == [("x", "1")]
    )
    assert admit("p-tok", Headers(), []).reject == (401, "credentials_missing")
    assert admit("p-tok", Headers({"Authorization": "Bearer nope"}), []).reject == (
        401,
        "proxy_token_invalid",
    )


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


def test_non_loopback_listen_needs_a_token(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", {"proxy": {"listen": "0.0.0.0:8788"}})
    with pytest.raises(
        ConfigError, match=r"proxy.listen: 0.0.0.0:8788 is reachable from other machines"
    ):
        load_config(cfg, env={})
    assert load_config(cfg, env={"RECORDER_PROXY_TOKEN": "t"}).proxy.token == "t"
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert result.exit_code == 2 and "proxy.token" in result.output
    allowed = write_config(
        tmp_path / "d.toml",
        {"proxy": {"listen": "0.0.0.0:8788", "allow_remote_without_auth": True}},
    )
    assert load_config(allowed, env={}).proxy.listen == "0.0.0.0:8788"
    local = write_config(tmp_path / "e.toml", {"proxy": {"listen": "[::1]:8788"}})
    assert load_config(local, env={}).proxy.host == "::1"


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

        await wait_until(svc, lambda: _closed_count(svc, 1))
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
        await wait_until(svc, lambda: _closed_count(svc, 1))
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


class HeaderOptions(TypedDict, total=False):
    """The ``connect()`` options a test passes through ``**kwargs``."""

    additional_headers: dict[str, str]


async def test_credentials_pass_through_and_upstream_rejections_reach_the_client(
    make_config: Callable[..., Config],
) -> None:
    opts = SimulatorOptions(port=0, token="daemon-tok", api_key="daemon-key")
    async with Simulator(opts) as sim, running(make_config(sim.url)) as svc:
        cases: list[tuple[HeaderOptions, str]] = [
            ({"additional_headers": {"Authorization": "Bearer daemon-tok"}}, "/"),
            ({"additional_headers": {"x-api-key": "daemon-key"}}, "/"),
            ({}, "/?token=daemon-tok"),
            ({}, "/?apiKey=daemon-key"),
        ]
        for kwargs, path in cases:
            async with connect(proxy_url(svc, path), **kwargs) as ws:
                assert json.loads(await ws.recv())["type"] == "health_check_response"
        with pytest.raises(InvalidStatus) as err:
            async with connect(proxy_url(svc)):
                pass
        assert err.value.response.status_code == 401
        assert json.loads(err.value.response.body) == {"error": "credentials_missing"}
        with pytest.raises(InvalidStatus) as err:
            async with connect(proxy_url(svc, "/?token=wrong")):
                pass
        assert err.value.response.status_code == 401 and b"error" in err.value.response.body


async def test_inject_auth_replaces_client_credentials(make_config: Callable[..., Config]) -> None:
    async with Simulator(SimulatorOptions(port=0, token="daemon-tok")) as sim:
        config = make_config(
            sim.url,
            daemon={"token": "daemon-tok"},
            proxy={"inject_auth": True, "token": "proxy-tok"},
        )
        async with running(config) as svc:
            # A client presenting the proxy's token is lent the recorder's credentials...
            async with connect(proxy_url(svc) + "?token=proxy-tok") as ws:
                assert json.loads(await ws.recv())["type"] == "health_check_response"
            # ...and one without it gets nothing of them.
            with pytest.raises(InvalidStatus) as caught:
                async with connect(proxy_url(svc)):
                    pass
            assert caught.value.response.status_code == 401


class Upstream:
    """A bare upstream that remembers what it was asked and how it was closed."""

    def __init__(self, **serve_kwargs: Any) -> None:
        self.requests: list[tuple[str, Headers]] = []
        self.closes: list[tuple[int | None, str | None]] = []
        self.close_with: tuple[int, str] | None = None
        self.abort = False
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.kwargs = serve_kwargs

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.requests.append((ws.request.path, ws.request.headers))
        await ws.send('{"type":"health_check_response","healthy":true}')
        self.connected.set()
        try:
            if self.abort:
                await ws.recv()
                ws.transport.abort()
                return
            if self.close_with:
                await ws.recv()
                await ws.close(*self.close_with)
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closes.append((ws.close_code, ws.close_reason))
            self.done.set()

    async def __aenter__(self) -> Upstream:
        self.server = await serve(self.handler, "127.0.0.1", 0, **self.kwargs)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


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

        await wait_until(svc, lambda: _closed_count(svc, 2))
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

        await wait_until(svc, lambda: _closed_count(svc, 2))
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


async def test_proxy_token_is_enforced_and_never_leaks(make_config: Callable[..., Config]) -> None:
    secret = "proxy-SECRET-9"
    with structlog.testing.capture_logs() as logs:
        async with Upstream() as up:
            config = make_config(up.url, proxy={"token": secret})
            async with running(config) as svc:
                for path, headers in [
                    ("/", {}),
                    ("/?token=nope", {}),
                    ("/", {"Authorization": "Bearer nope"}),
                ]:
                    with pytest.raises(InvalidStatus) as err:
                        async with connect(proxy_url(svc, path), additional_headers=headers):
                            pass
                    assert err.value.response.status_code == 401
                async with connect(
                    proxy_url(svc), additional_headers={"Authorization": f"Bearer {secret}"}
                ) as ui:
                    await ui.recv()
                async with connect(
                    proxy_url(svc, f"/?token={secret}&session=1"),
                    additional_headers={"Authorization": "Bearer daemon-jwt"},
                ) as ui:
                    await ui.recv()
                await wait_until(svc, lambda: _closed_count(svc, 2))
                urls = [r.url for r in await query(svc, "select url from connections")]
    assert len(up.requests) == 3  # the passive link, then the two admitted clients
    (p1, h1), (p2, h2) = up.requests[1:]
    assert "Authorization" not in h1 and secret not in p1
    assert p2 == "/?session=1" and h2["Authorization"] == "Bearer daemon-jwt"
    assert secret not in repr(logs) and not any(secret in u for u in urls)


async def _closed_count(svc: Service, n: int) -> bool:
    rows = await query(
        svc, "select 1 from connections where role='proxy' and closed_at_us is not null"
    )
    return len(rows) == n


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


async def test_max_clients(make_config: Callable[..., Config]) -> None:
    async with Simulator(SimulatorOptions(port=0)) as sim:
        async with (
            running(make_config(sim.url, proxy={"max_clients": 1})) as svc,
            connect(proxy_url(svc)) as ui,
        ):
            await ui.recv()
            with pytest.raises(InvalidStatus) as err:
                async with connect(proxy_url(svc)):
                    pass
            assert err.value.response.status_code == 429


async def test_unreachable_upstream_is_502(make_config: Callable[..., Config]) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with running(make_config(f"ws://127.0.0.1:{port}")) as svc:
        with pytest.raises(InvalidStatus) as err:
            async with connect(proxy_url(svc)):
                pass
        assert err.value.response.status_code == 502


async def test_stopping_the_service_closes_proxied_clients_with_1001(
    make_config: Callable[..., Config],
) -> None:
    async with Simulator(SimulatorOptions(port=0)) as sim:
        async with running(make_config(sim.url)) as svc:
            ui = await connect(proxy_url(svc))
            await ui.recv()
        await closed_by_proxy(ui)
        assert (ui.close_code, ui.close_reason) == (1001, "")


async def test_oversized_frame_from_the_ui_is_refused_and_noted(
    make_config: Callable[..., Config],
) -> None:
    async with Upstream() as up:
        config = make_config(up.url, daemon={"max_frame_bytes": 4096})
        async with running(config) as svc:
            async with connect(proxy_url(svc)) as ui:
                await ui.recv()
                await ui.send("x" * 10_000)
                await closed_by_proxy(ui)
                assert ui.close_code == 1009
            await asyncio.wait_for(up.done.wait(), T)
            assert up.closes[-1][0] == 1011  # the daemon is told the conversation failed
            await wait_until(svc, lambda: _closed_count(svc, 1))
            row = (await query(svc, "select * from connections where role = 'proxy'"))[0]
    assert (row.closed_by, row.close_code) == ("recorder", 1009)
    assert "max_frame_bytes" in row.error


async def test_a_conversation_the_writer_cannot_record_frees_its_slot_and_upstream(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    """An insert that fails for a UI's connection row: the UI and its upstream are
    closed, its slot is freed (more failures than max_clients, then a conversation)."""
    async with Simulator(SimulatorOptions(port=0)) as sim:
        async with running(make_config(sim.url, proxy={"max_clients": 2})) as svc:
            await asyncio.wait_for(svc.link.connected.wait(), T)
            lift = refuse_connections(db_path, "proxy")
            for _ in range(3):
                async with connect(proxy_url(svc)) as ui:
                    await closed_by_proxy(ui)
                assert (ui.close_code, ui.close_reason) == (1011, "recorder cannot record")
            assert svc.proxy is not None and svc.proxy.clients == 0
            # Only the passive link is still connected to the daemon.
            await sim.settle(lambda: sim.connection_count == 1, timeout=T)
            lift()
            async with connect(proxy_url(svc)) as ui:
                assert json.loads(await ui.recv())["type"] == "health_check_response"
            assert svc.proxy.conversations == 1
        assert svc.exit_code == 0


def test_the_proxy_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert admit("p-tok", Headers({"Authorization": "Bearer p-tok"}), []).trusted
    assert compared == [(b"p-tok", b"p-tok")]
    compared.clear()
    ok = admit("p-tok", Headers(), [("a", "1"), ("token", "p-tok")])
    assert ok.reject is None and ok.query == [("a", "1")] and (b"p-tok", b"p-tok") in compared
    compared.clear()
    bad = admit("p-tok", Headers({"Authorization": "Bearer p-tol"}), [("token", "p-tom")])
    assert bad.reject == (401, "proxy_token_invalid")
    assert compared == [(b"p-tol", b"p-tok"), (b"p-tom", b"p-tok")]
    # Not only ASCII: compared as bytes, never a TypeError.
    assert admit("clé", Headers({"Authorization": "Bearer clé"}), []).trusted
    assert admit("clé", Headers({"Authorization": "Bearer cle"}), []).reject is not None
