"""The daemon link over real sockets: what it records (garbage, frames large and too
large, heartbeats), how promptly, and how it connects (auth, TLS, an unusable
database). Reconnecting is tests/test_link_reconnect.py."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from websockets.asyncio.server import ServerConnection, serve

from recorder.config import Config
from recorder.protocol.requests import PING
from recorder.simulator import Simulator, SimulatorOptions
from recorder.times import now_us
from tests.conftest import running
from tests.helpers import query, wait_for_frame, wait_until

GARBAGE: list[tuple[str | bytes, bool | None, str]] = [
    ("this is not json", None, "invalid_json"),
    ("[1, 2, 3]", None, "not_object"),
    ("[" * 50_000 + "]" * 50_000, None, "too_deep"),
    (b"\x00\xffbinary\x80", None, "binary"),
    (b'{"type":"x","bad":"\xff\xfe"}', True, "invalid_utf8"),
    ('{"type":"x","nul":"\x00"}', None, "invalid_json"),
    ("", None, "invalid_json"),
]


async def test_garbage_is_recorded_exactly_and_the_link_keeps_going(
    make_config: Callable[..., Config],
) -> None:
    async with Simulator(SimulatorOptions(port=0)) as sim, running(make_config(sim.url)) as svc:
        await asyncio.wait_for(svc.link.connected.wait(), 10)
        for data, text, _ in GARBAGE:
            await sim.broadcast_raw(data, text=text)
        odd = '{ "type" : "odd",  "type":"dup", "s":"\\ud83d", "k": {"a": [1,2]} }'
        await sim.broadcast_raw(odd)
        last = await wait_for_frame(svc, "type = 'dup'")
        rows = await query(
            svc,
            "select payload, payload_bytes, parse_error, opcode, size from frames "
            "where direction = 'in' and id < :last and id > :last - :n order by id",
            last=last.id,
            n=len(GARBAGE) + 1,
        )
        assert len(rows) == len(GARBAGE)
        for (data, text, reason), row in zip(GARBAGE, rows, strict=True):
            raw = data.encode() if isinstance(data, str) else data
            stored = row.payload.encode() if row.payload is not None else row.payload_bytes
            assert stored == raw and row.size == len(raw)
            assert row.parse_error == reason
            is_text = isinstance(data, str) or text is True
            assert row.opcode == (1 if is_text else 2)
        assert last.payload == odd
        # Still the first connection, and still alive: it answers a ping.
        assert svc.link.connections == 1
        assert await svc.link.request(PING)
        await wait_for_frame(svc, "type = 'pong' and id > :id", id=last.id)


async def test_auth_headers_are_sent_and_never_logged(make_config: Callable[..., Config]) -> None:
    opts = SimulatorOptions(port=0, token="tok-SECRET-1", api_key="key-SECRET-2")
    with structlog.testing.capture_logs() as logs:
        async with Simulator(opts) as sim:
            config = make_config(
                sim.url, daemon={"token": "tok-SECRET-1", "api_key": "key-SECRET-2"}
            )
            async with running(config) as svc:
                await asyncio.wait_for(svc.link.connected.wait(), 10)
                await wait_for_frame(svc, "type = 'health_check_response'")
    assert "SECRET" not in repr(logs)
    assert any(e["event"] == "connected to daemon" for e in logs)


async def test_oversized_frame_closes_with_1009_and_is_noted(
    make_config: Callable[..., Config],
) -> None:
    async with Simulator(SimulatorOptions(port=0)) as sim:
        config = make_config(sim.url, daemon={"max_frame_bytes": 4096})
        async with running(config) as svc:
            await asyncio.wait_for(svc.link.connected.wait(), 10)
            await sim.broadcast_raw('{"type":"big","x":"' + "y" * 10_000 + '"}')
            await asyncio.wait_for(svc.link.disconnected.wait(), 10)
            await sim.wait_connections(2, timeout=10)
            await asyncio.wait_for(svc.link.connected.wait(), 10)
            first = (await query(svc, "select * from connections where id = 1"))[0]
    assert first.close_code == 1009 and first.closed_by == "local"
    assert "max_frame_bytes" in first.error


async def test_large_frames_below_the_limit_are_recorded(
    make_config: Callable[..., Config],
) -> None:
    big = (
        '{"type":"tool_call_result","data":{"sessionId":"s_big","result":{"content":"'
        + "z" * (3 << 20)
        + '"}}}'
    )
    async with Simulator(SimulatorOptions(port=0)) as sim, running(make_config(sim.url)) as svc:
        await asyncio.wait_for(svc.link.connected.wait(), 10)
        await sim.broadcast_raw(big)
        row = await wait_for_frame(svc, "type = 'tool_call_result'")
    assert row.payload == big and row.session_id == "s_big"


async def test_protocol_heartbeat_is_recorded(make_config: Callable[..., Config]) -> None:
    async with Simulator(SimulatorOptions(port=0)) as sim:
        config = make_config(sim.url, heartbeat={"interval": 0.1, "timeout": 5.0})
        async with running(config) as svc:
            ping = await wait_for_frame(svc, "type = 'ping' and direction = 'out'")
            pong = await wait_for_frame(svc, "type = 'pong' and id > :id", id=ping.id)
    assert ping.payload == PING and pong.payload == '{"type":"pong"}'


async def test_writer_commits_promptly_while_idle_link_waits(
    make_config: Callable[..., Config],
) -> None:
    """A frame on a link that then goes quiet is committed within commit_interval, not
    when a batch fills (it never would) nor at the next frame: its commit is seen well
    within ten intervals of its receipt."""
    interval = 0.1
    async with Simulator(SimulatorOptions(port=0)) as sim:
        config = make_config(sim.url, storage={"commit_interval": interval})
        async with running(config) as svc:
            found: list[Any] = []

            async def has_status() -> bool:
                found[:] = await query(
                    svc, "select received_at_us from frames where type = 'daemon_status_update'"
                )
                return bool(found)

            await wait_until(svc, has_status)
            seen_us = now_us()
    # The daemon's reply to the link's daemon_status, the last frame before it idles.
    assert (seen_us - found[0].received_at_us) / 1e6 < 10 * interval


async def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, made by openssl, and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def say_healthy(ws: ServerConnection) -> None:
    """A daemon's greeting, then nothing until the recorder hangs up."""
    await ws.send('{"type":"health_check_response","healthy":true}')
    await ws.wait_closed()


@pytest.mark.parametrize("trusted_by", ["ca_file", "the system"])
async def test_wss_with_a_private_ca(
    make_config: Callable[..., Config],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trusted_by: str,
) -> None:
    """wss:// to a daemon whose certificate the configured CA file vouches for, or the
    system's trust store (here OpenSSL's SSL_CERT_FILE). Without ca_file every wss://
    URL was refused before a connection was tried (found probing bad input)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = await self_signed_certificate(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    async with serve(say_healthy, "127.0.0.1", 0, ssl=server_ctx) as server:
        port = server.sockets[0].getsockname()[1]
        if trusted_by == "ca_file":
            config = make_config(f"wss://127.0.0.1:{port}", daemon={"ca_file": str(cert)})
        else:
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            config = make_config(f"wss://127.0.0.1:{port}")
        async with running(config) as svc:
            row = await wait_for_frame(svc, "type = 'health_check_response'")
            conn = (
                await query(svc, "select url from connections where id = :id", id=row.connection_id)
            )[0]
    assert conn.url == f"wss://127.0.0.1:{port}"


async def test_unusable_database_stops_the_service_with_one_clear_line(
    make_config: Callable[..., Config],
) -> None:
    from recorder.service.lifecycle import Service

    config = make_config(
        "ws://127.0.0.1:9", storage={"url": "sqlite:////proc/no-such-dir/recorder.db"}
    )
    with structlog.testing.capture_logs() as logs:
        code = await asyncio.wait_for(Service(config).run(asyncio.Event()), 30)
    assert code == 1
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["event"] == (
        "cannot use database /proc/no-such-dir/recorder.db: No such file or directory"
    )
