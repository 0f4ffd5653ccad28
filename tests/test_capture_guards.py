"""Findings of an attack on the capture side as issue 17 left it (the link, the proxy,
the stop): a healthy daemon behind a slow network, a UI that reads nothing, what the
daemon's /health says. One test each; each failed before its fix. Connections that
never finish their handshake are tests/test_port_guards.py."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from recorder.config import Config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import TIMEOUT, running, write_config
from tests.deaf_clients import deaf_client, wait_backed_up
from tests.helpers import free_port, query, recorder_process, wait_until
from tests.raw_daemon import SlowNetworkDaemon, StubbornDaemon

T = 10

# --- the proxy: a UI that reads nothing ----------------------------------------------------


async def test_a_frame_is_recorded_as_it_arrives_not_once_a_slow_ui_has_taken_it(
    make_config: Callable[..., Config],
) -> None:
    """The proxy hands a frame to the writer before relaying it. It relayed first: a
    UI that did not read held the daemon's frame back from the recording for as long
    (for ever, here), and frames took ids out of the order of their receive times,
    which `frames --since` looks them up by."""
    big = b'{"type":"stream_chunk","data":{"chunk":"' + b"x" * (16 << 20) + b'"}}'
    async with Simulator(SimulatorOptions(port=0)) as sim, running(make_config(sim.url)) as svc:
        assert svc.proxy is not None
        await sim.wait_connections(1)
        ui = await asyncio.to_thread(deaf_client, f"ws://127.0.0.1:{svc.proxy.port}")
        try:
            await sim.wait_connections(2)
            await sim.broadcast_raw(big, text=True)

            async def recorded() -> bool:
                rows = await query(
                    svc,
                    "select 1 from frames where size = :size and connection_id = "
                    "(select id from connections where role = 'proxy')",
                    size=len(big),
                )
                return len(rows) == 1

            await wait_until(svc, recorded, timeout=T)
        finally:
            ui.close()


# --- the link: a healthy daemon behind a slow network ------------------------------------


async def test_a_healthy_daemon_behind_a_slow_network_is_not_dropped_mid_frame(
    make_config: Callable[..., Config],
) -> None:
    """Data loss, and a reconnect loop. Link._alive counts only whole frames as life:
    while one large frame is on its way (its pong queued behind it) nothing "is
    received", so the heartbeat drops a daemon that is sending all along ("heartbeat
    timeout: nothing received within 0.6s of a ping") and the frame is lost. With the
    defaults (interval 30 s, timeout 10 s) that is any frame that takes more than about
    10 s to arrive: 10 MB at 1 MB/s; and after each reconnect the link asks
    list_sessions again, whose large answer is dropped the same way, for ever. Here a
    400 kB sessions_list at 200 kB/s (2 s) with interval 0.3 s, timeout 0.6 s."""
    daemon = SlowNetworkDaemon(size=400_000, rate=200_000)
    server = await asyncio.start_server(daemon.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = make_config(f"ws://127.0.0.1:{port}", heartbeat={"interval": 0.3, "timeout": 0.6})
    try:
        async with running(config) as svc:

            async def arrived() -> bool:
                rows = await query(svc, "select id from frames where size > 400000")
                closed = await query(
                    svc, "select id from connections where closed_at_us is not null"
                )
                return bool(rows) or bool(closed)

            async with asyncio.timeout(TIMEOUT):
                while not await arrived():  # noqa: ASYNC110 - the database is polled
                    await asyncio.sleep(0.05)
            first = (await query(svc, "select * from connections order by id limit 1"))[0]
            big = await query(svc, "select connection_id from frames where size > 400000")
    finally:
        server.close()
        await daemon.hang_up()
    assert first.error is None, first.error
    assert [row.connection_id for row in big] == [first.id]


# --- /health: what the daemon's /health says ------------------------------------------------


async def test_health_survives_a_daemon_health_body_nested_too_deep(
    make_config: Callable[..., Config],
) -> None:
    """Cosmetic (a traceback, and a 500). The proxy's /health parses the daemon's
    /health body with json.loads, catching ValueError only: a body of 100 000 nested
    brackets (within the 1 MiB it reads) raises RecursionError out of process_request,
    websockets logs "opening handshake failed" with a traceback, and the client gets
    500 "Failed to open a WebSocket connection" instead of the recorder's answer."""
    body = b"[" * 100_000 + b"]" * 100_000

    async def daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(daemon, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = make_config(f"ws://127.0.0.1:{port}", reconnect={"base": 5.0, "cap": 5.0})
    try:
        async with running(config) as svc:
            assert svc.proxy is not None
            health = f"http://127.0.0.1:{svc.proxy.port}/health"

            def get() -> tuple[int, bytes]:
                try:
                    with urllib.request.urlopen(health, timeout=TIMEOUT) as response:
                        return int(response.status), bytes(response.read())
                except urllib.error.HTTPError as exc:
                    return int(exc.code), bytes(exc.read())

            code, answer = await asyncio.to_thread(get)
    finally:
        server.close()
    assert code in (200, 503), (code, answer[:100])
    assert "recorder" in json.loads(answer)


# --- the stop: a UI that reads nothing, a daemon that never finishes a close ---------------


SHUTDOWN_TIMEOUT = 3.0


def stop_config(tmp_path: Path, daemon_port: int, proxy_port: int) -> Path:
    """A recorder of the daemon at ``daemon_port``, its proxy on ``proxy_port``, that
    stops within SHUTDOWN_TIMEOUT and sends no heartbeat while it runs."""
    return write_config(
        tmp_path / "c.toml",
        {
            "daemon": {"url": f"ws://127.0.0.1:{daemon_port}"},
            "heartbeat": {"interval": 60.0, "timeout": 60.0},
            "storage": {
                "url": f"sqlite:///{tmp_path / 'r.db'}",
                "shutdown_timeout": SHUTDOWN_TIMEOUT,
            },
            "proxy": {"listen": f"127.0.0.1:{proxy_port}"},
            "log": {"format": "json"},
        },
    )


async def seconds_to_exit(recorder: asyncio.subprocess.Process) -> float:
    """SIGTERM, then the seconds until the process exits (waited for up to 8 s past
    SHUTDOWN_TIMEOUT)."""
    recorder.terminate()
    stopped = time.monotonic()
    try:
        await asyncio.wait_for(recorder.communicate(), SHUTDOWN_TIMEOUT + 8.0)
    except TimeoutError:
        pass
    return time.monotonic() - stopped


async def stop_beside_a_deaf_ui(tmp_path: Path, daemon: StubbornDaemon) -> float:
    """The seconds a recorder takes to exit after SIGTERM while its proxy carries a UI
    that reads nothing (its socket backed up) and ``daemon`` streams to it."""
    proxy_port = free_port()
    server = await asyncio.start_server(daemon.handle, "127.0.0.1", 0)
    config = stop_config(tmp_path, server.sockets[0].getsockname()[1], proxy_port)
    recorder = await recorder_process("run", "--config", str(config), merge_stderr=True)
    assert recorder.stdout is not None
    ui: socket.socket | None = None
    try:
        async with asyncio.timeout(TIMEOUT):
            while b"proxy listening" not in await recorder.stdout.readline():
                pass
        ui = await asyncio.to_thread(deaf_client, f"ws://127.0.0.1:{proxy_port}")
        await asyncio.to_thread(wait_backed_up, [ui])
        return await seconds_to_exit(recorder)
    finally:
        if recorder.returncode is None:
            recorder.kill()
            await recorder.wait()
        if ui is not None:
            ui.close()
        server.close()
        await daemon.hang_up()


def test_the_recorder_exits_within_the_shutdown_timeout_beside_a_ui_that_does_not_read(
    tmp_path: Path,
) -> None:
    """A stall of the stop, past what it says. With a UI through the proxy that reads
    nothing while the daemon streams to it, SIGTERM logs "recorder stopped" within
    shutdown_timeout (3 s here: seconds=2.9, lost=0, exit code 0), but the process
    exits 10 s after the signal: asyncio.run's teardown waits for the conversation's
    tasks the stop left ("proxy conversations did not end after an abort; leaving
    them"): the pumps, websockets' Connection.close towards the UI (stuck in drain)
    and Server._close, which end at websockets' default close_timeout (10 s; the
    proxy's serve() sets none). A shutdown_timeout under 10 s is not what systemd
    sees; tests/faults/test_deaf_daemon.py times the service's task, not the
    process."""
    took = asyncio.run(stop_beside_a_deaf_ui(tmp_path, StubbornDaemon()))
    assert took < SHUTDOWN_TIMEOUT + 1.0, f"the process exited {took:.1f} s after SIGTERM"
