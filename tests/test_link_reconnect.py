"""The daemon link when a connection ends or cannot be made: a rejected handshake, what
it asks after a reconnect, the backoff and its bounds, giving up."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from websockets.asyncio.client import connect

from recorder.capture.backoff import Backoff
from recorder.config import Config, ConfigError, load_config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config
from tests.helpers import query, refuse_connections, wait_for_frame


async def test_rejected_handshake_is_logged_once_and_retried_at_the_cap(
    make_config: Callable[..., Config],
) -> None:
    """A 401 with a JSON body: one error line with the daemon's reason, then slow quiet retries."""
    attempts: list[float] = []
    third = asyncio.Event()

    async def reject(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        attempts.append(time.monotonic())
        if len(attempts) >= 3:
            third.set()
        body = b'{"error":"jwt_expired"}'
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reject, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = make_config(f"ws://127.0.0.1:{port}", reconnect={"base": 0.01, "cap": 0.3})
    with structlog.testing.capture_logs() as logs:
        async with running(config):
            await asyncio.wait_for(third.wait(), 10)
    server.close()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Full jitter would often retry within base (0.01 s); a rejection waits the whole cap.
    assert all(gap >= 0.28 for gap in gaps), gaps
    rejected = [e for e in logs if e["event"] == "daemon rejected the handshake"]
    assert len(rejected) == 1
    assert rejected[0]["status"] == 401 and "jwt_expired" in rejected[0]["body"]


async def test_after_reconnect_the_link_asks_what_it_missed(
    make_config: Callable[..., Config],
) -> None:
    """daemon_status, list_sessions and session_status for each session still believed active."""
    opts = SimulatorOptions(port=0, chunk_delay=5.0, chunks_per_task=(50, 50))
    async with Simulator(opts) as sim, running(make_config(sim.url)) as svc:
        await asyncio.wait_for(svc.link.connected.wait(), 10)
        async with connect(sim.url) as ui:
            await ui.recv()
            await ui.send(
                json.dumps(
                    {
                        "type": "spawn_session",
                        "payload": {"orchestratorId": "vp_1", "task": {"description": "long job"}},
                    }
                )
            )
            running_row = await wait_for_frame(svc, "type = 'session_status_update'")
            sid = running_row.session_id
            await sim.disconnect_all()
            await sim.wait_connections(3, timeout=10)  # ui + recorder + recorder again
            request = await wait_for_frame(
                svc, "type = 'session_status' and direction = 'out' and connection_id = 2"
            )
            assert request.session_id == sid
            reply = await wait_for_frame(
                svc,
                "type = 'session_status_update' and connection_id = 2 and session_id = :sid",
                sid=sid,
            )
            assert json.loads(reply.payload)["session"]["status"] == "running"
        received = [e.data for e in sim.journal if e.direction == "received" and e.conn == 3]
        assert received[:2] == ['{"type":"daemon_status"}', '{"type":"list_sessions"}']
        assert json.loads(str(received[2])) == {
            "type": "session_status",
            "payload": {"sessionId": sid},
        }
        out_rows = await query(
            svc,
            "select payload from frames where direction = 'out' and connection_id = 2 order by seq",
        )
        assert [r.payload for r in out_rows][:3] == received[:3]


async def test_daemon_shutdown_is_recorded_and_redialled(
    make_config: Callable[..., Config],
) -> None:
    opts = SimulatorOptions(port=0)
    sim = Simulator(opts)
    await sim.start()
    port = sim.port
    config = make_config(sim.url)
    async with running(config) as svc:
        await wait_for_frame(svc, "type = 'health_check_response'")
        await sim.stop()
        await asyncio.wait_for(svc.link.disconnected.wait(), 10)
        row: Any = (await query(svc, "select * from connections where id = 1"))[0]
        assert (row.close_code, row.close_reason, row.closed_by) == (
            1000,
            "Server shutting down",
            "remote",
        )
        sim2 = Simulator(SimulatorOptions(port=port))
        await sim2.start()
        try:
            await asyncio.wait_for(svc.link.connected.wait(), 10)
            await wait_for_frame(svc, "connection_id = 2")
        finally:
            await sim2.stop()


async def test_max_attempts_gives_up_with_exit_code_1(make_config: Callable[..., Config]) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    config = make_config(
        f"ws://127.0.0.1:{port}", reconnect={"max_attempts": 2, "base": 0.01, "cap": 0.02}
    )
    from recorder.service.lifecycle import Service

    service = Service(config)
    code = await asyncio.wait_for(service.run(asyncio.Event()), 10)
    assert code == 1


async def test_backoff_resets_only_after_a_stable_connection(
    make_config: Callable[..., Config],
) -> None:
    """A daemon that drops every connection at once must not be re-dialled at the base delay forever."""
    opts = SimulatorOptions(port=0, disconnect_after=1)
    for stable_after, expect_growth in ((60.0, True), (0.0, False)):
        async with Simulator(opts) as sim:
            config = make_config(
                sim.url, reconnect={"base": 0.001, "cap": 0.01, "stable_after": stable_after}
            )
            async with running(config) as svc:
                await sim.wait_connections(4, timeout=10)
                attempts = svc.link.backoff.attempt
        assert (attempts >= 3) is expect_growth, (stable_after, attempts)


async def test_a_connection_the_writer_cannot_record_is_retried(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    """A connection row that cannot be written is a failed attempt: the link hangs up,
    waits its backoff and dials again; the service goes on."""
    async with Simulator(SimulatorOptions(port=0)) as sim:
        config = make_config(sim.url, proxy={"enabled": False})
        with structlog.testing.capture_logs() as logs:
            async with running(config) as svc:
                await asyncio.wait_for(svc.link.connected.wait(), 10)
                lift = refuse_connections(db_path, "link")
                await sim.disconnect_all()
                # Dialled twice more after the first refusal: the link lives on.
                await sim.wait_connections(3, timeout=10)
                assert svc.link.reconnects.get("writer", 0) >= 1
                assert "cannot record the connection" in (svc.link.last_error or "")
                lift()
                await asyncio.wait_for(svc.link.connected.wait(), 10)
                assert svc.link.connections == 2
            assert svc.exit_code == 0
    refused = [e for e in logs if e["event"] == "cannot record the daemon connection; hanging up"]
    assert refused and all("refused by the test" in e["error"] for e in refused)
    assert not [e for e in logs if e["event"] == "link failed"]


def test_reconnect_durations_are_bounded(tmp_path: Path) -> None:
    """A day at most for every reconnect and heartbeat duration; a factor that cannot
    overflow; each refusal names its key."""
    cases = [
        ({"reconnect": {"base": 1e308, "cap": 1e308}}, "reconnect.base"),
        ({"reconnect": {"cap": 86_401.0}}, "reconnect.cap"),
        ({"reconnect": {"stable_after": float("inf")}}, "reconnect.stable_after"),
        ({"reconnect": {"factor": 1e308}}, "reconnect.factor"),
        ({"reconnect": {"factor": float("nan")}}, "reconnect.factor"),
        ({"heartbeat": {"interval": 1e308}}, "heartbeat.interval"),
        ({"heartbeat": {"timeout": 1e9}}, "heartbeat.timeout"),
    ]
    for sections, key in cases:
        path = write_config(tmp_path / "c.toml", sections)
        with pytest.raises(ConfigError, match=rf": {key}: must be"):
            load_config(path, env={})
    day = write_config(tmp_path / "c.toml", {"reconnect": {"base": 60.0, "cap": 86_400.0}})
    assert load_config(day, env={}).reconnect.cap == 86_400.0


def test_the_backoff_cannot_overflow() -> None:
    """Whatever it is given, every delay is finite and converts to microseconds."""
    for base, factor, cap in (
        (1e308, 2.0, 1e308),
        (3.0, 1e308, 30.0),
        (1.0, 1e10, 1e300),
        (float("inf"), float("inf"), float("inf")),
    ):
        backoff = Backoff(base, factor, cap, rng=random.Random(1))
        for _ in range(200):
            delay = backoff.next_delay()
            assert 0 <= delay <= 86_400 and int(delay * 1e6) >= 0
        assert 0 <= backoff.capped_delay() <= 86_400
    assert Backoff(3.0, 2.0, 30.0).ceiling() == 3.0
    grown = Backoff(3.0, 2.0, 30.0, attempt=3)
    assert grown.ceiling() == 24.0 and Backoff(3.0, 2.0, 30.0, attempt=4).ceiling() == 30.0


async def test_a_huge_reconnect_delay_does_not_kill_the_link(
    make_config: Callable[..., Config],
) -> None:
    """Past config.py (an embedding caller), a delay of 1e308 s must not raise."""
    config = make_config("ws://127.0.0.1:9", proxy={"enabled": False})
    huge = dataclasses.replace(
        config.reconnect, base=1e308, factor=1e308, cap=float("inf"), stable_after=0.0
    )
    with structlog.testing.capture_logs() as logs:
        async with running(dataclasses.replace(config, reconnect=huge)) as svc:
            assert svc.link.state == "waiting" and svc.link.retry_at_us is not None
        assert svc.exit_code == 0
    assert not [e for e in logs if e["event"] == "link failed"]
