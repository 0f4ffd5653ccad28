"""The proxy under hostile clients: nothing leaks, nothing is lent."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from recorder.config import Config, ConfigError, load_config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config

TIMEOUT = 30


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_aborted_handshakes_free_their_slots_and_upstreams(
    make_config: Callable[..., Config],
) -> None:
    async with Simulator(SimulatorOptions(port=0)) as sim:
        config = make_config(sim.url, proxy={"max_clients": 8})
        async with running(config) as svc:
            assert svc.proxy is not None
            await asyncio.wait_for(svc.link.connected.wait(), TIMEOUT)
            port = svc.proxy.port
            for _ in range(64):  # each sends a valid upgrade request and leaves at once
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(upgrade_request(port))
                await writer.drain()
                writer.close()
            # Every slot and upstream connection comes back: only the link is left.
            await sim.settle(lambda: sim.connection_count == 1)
            async with connect(f"ws://127.0.0.1:{port}") as ui:
                assert "health_check_response" in str(await ui.recv())


async def test_max_clients_counts_clients_still_in_their_handshake(
    make_config: Callable[..., Config],
) -> None:
    async with Simulator(SimulatorOptions(port=0)) as sim:
        config = make_config(sim.url, proxy={"max_clients": 3})
        async with running(config) as svc:
            assert svc.proxy is not None
            url = f"ws://127.0.0.1:{svc.proxy.port}"

            async def one() -> bool:
                try:
                    ws = await connect(url)
                except InvalidStatus as exc:
                    assert exc.response.status_code == 429
                    return False
                await ws.recv()
                opened.append(ws)
                return True

            opened: list[object] = []
            results = await asyncio.gather(*(one() for _ in range(40)))
            assert sum(results) <= 3 and sim.total_connections <= 3 + 1 + 1
            for ws in opened:
                await ws.close()  # type: ignore[attr-defined]


async def test_a_token_in_the_daemon_url_is_not_lent_to_proxy_clients(
    make_config: Callable[..., Config],
) -> None:
    async with Simulator(SimulatorOptions(port=0, token="daemon-secret")) as sim:
        config = make_config(f"{sim.url}/?token=daemon-secret")
        async with running(config) as svc:
            assert svc.proxy is not None
            await asyncio.wait_for(svc.link.connected.wait(), TIMEOUT)  # the link uses it
            with pytest.raises(InvalidStatus) as caught:
                async with connect(f"ws://127.0.0.1:{svc.proxy.port}/"):
                    pass
            assert caught.value.response.status_code == 401
            assert b"credentials_missing" in caught.value.response.body


def test_a_blank_proxy_token_is_no_token(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"proxy": {"listen": "0.0.0.0:8788"}})
    with pytest.raises(ConfigError, match="reachable from other machines"):
        load_config(path, env={"RECORDER_PROXY_TOKEN": " "})
    blank = write_config(tmp_path / "d.toml", {"proxy": {"listen": "0.0.0.0:8788", "token": "  "}})
    with pytest.raises(ConfigError, match="reachable from other machines"):
        load_config(blank, env={})


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_a_frame_over_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    """A client announcing a 100 MiB frame is closed (1009) before the service buffers it."""
    from tests.service_process import Recorder

    async with Simulator(SimulatorOptions(port=0)) as sim:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = write_config(
            tmp_path / "c.toml",
            {
                "daemon": {"url": sim.url},
                "storage": {"url": f"sqlite:///{tmp_path / 'rec.db'}"},
                "proxy": {"listen": f"127.0.0.1:{port}"},
                "log": {"format": "json"},
            },
        )
        rec = Recorder(tmp_path, config)
        try:
            await asyncio.to_thread(rec.ready)
            before = vm_hwm_kb(rec.proc.pid)
            ws = await connect(f"ws://127.0.0.1:{port}", max_size=None)
            await ws.recv()
            size = 100 * 1024 * 1024
            # A masked text frame's header declaring 100 MiB, then its first 20 MiB.
            ws.transport.write(bytes([0x81, 0xFF]) + struct.pack("!Q", size) + b"\0\0\0\0")
            for _ in range(20):
                if ws.transport.is_closing():
                    break
                ws.transport.write(b"a" * (1 << 20))
                await ws.drain()
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert ws.close_code == 1009
            assert vm_hwm_kb(rec.proc.pid) - before < 16 * 1024  # nothing near 20 MiB kept
        finally:
            rec.proc.kill()
            rec.proc.wait()
