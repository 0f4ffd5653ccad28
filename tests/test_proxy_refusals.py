"""What the recording proxy refuses or ends, and what it records of it: a client past
max_clients, an unreachable upstream, a frame too large, a conversation the writer
cannot record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from recorder.config import Config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running
from tests.helpers import query, refuse_connections, wait_until
from tests.proxy_peers import T, Upstream, closed_by_proxy, closed_conversations, proxy_url


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
            await wait_until(svc, lambda: closed_conversations(svc, 1))
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
