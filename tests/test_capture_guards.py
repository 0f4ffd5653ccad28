"""Findings of an attack on the capture side as issue 17 left it (the link, the proxy's
port, the stop): a healthy daemon behind a slow network, connections that never
finish their handshake, a UI that reads nothing, what the daemon's /health says.
One test each; each failed before its fix."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import resource
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from recorder.config import Config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config
from tests.helpers import query, wait_until
from tests.test_read_guards import TIMEOUT, chunk
from tests.test_serve_guards import deaf_client, wait_backed_up

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

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        length = bytes([n])
    elif n < 1 << 16:
        length = bytes([126]) + struct.pack("!H", n)
    else:
        length = bytes([127]) + struct.pack("!Q", n)
    return bytes([0x80 | opcode]) + length + payload


class SlowNetworkDaemon:
    """A daemon that reads and answers every ping and protocol ping, behind a network
    that carries ``rate`` bytes/s to the recorder: its first connection gets a frame of
    ``size`` bytes first, and a pong asked for meanwhile waits behind it on the wire, as
    it would behind any frame (a WebSocket frame is not interleaved)."""

    def __init__(self, size: int, rate: int) -> None:
        self.size, self.rate = size, rate
        self.answers_close = True
        self.connections = 0
        self.handlers: set[asyncio.Task[Any]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.append(writer)
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        wire = asyncio.Lock()

        async def send(data: bytes, step: int) -> None:
            async with wire:
                for at in range(0, len(data), step):
                    if writer.is_closing():
                        return  # the recorder hung up
                    writer.write(data[at : at + step])
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    if step < len(data):
                        await asyncio.sleep(step / self.rate)

        answering = asyncio.ensure_future(self._answer(reader, writer, send))
        await self.speak(send, self.connections, writer)
        await answering

    async def speak(self, send: Any, number: int, writer: asyncio.StreamWriter) -> None:
        """What the daemon sends on its connection ``number``."""
        if number == 1:
            big = json.dumps({"type": "sessions_list", "sessions": [], "pad": "x" * self.size})
            await send(ws_frame(1, big.encode()), self.rate // 20)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, send: Any
    ) -> None:
        try:
            while True:
                first, second = await reader.readexactly(2)
                n = second & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await reader.readexactly(8))[0]
                mask = await reader.readexactly(4)
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
                opcode = first & 0x0F
                answer = None
                if opcode == 0x9:
                    answer = ws_frame(0xA, payload)
                elif opcode == 0x1 and b'"ping"' in payload:
                    answer = ws_frame(0x1, b'{"type":"pong"}')
                if answer is not None:  # sent once the wire is free, while reading on
                    pending = asyncio.ensure_future(send(answer, 1 << 30))
                    self.handlers.add(pending)
                elif opcode == 0x8 and self.answers_close:
                    await send(ws_frame(0x8, payload[:2]), 1 << 30)
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


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
        for writer in daemon.writers:
            writer.transport.abort()
        await asyncio.gather(*daemon.handlers, return_exceptions=True)
    assert first.error is None, first.error
    assert [row.connection_id for row in big] == [first.id]


# --- the proxy's port: connections that never finish their handshake ---------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_files(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_idle_connections_to_the_proxy_port_do_not_keep_the_link_from_dialling(
    tmp_path: Path,
) -> None:
    """A stall of the recording, from anyone who reaches the proxy's port (no token
    needed: the handshake is never sent). systemd gives a service 1024 descriptors
    (DefaultLimitNOFILE; the unit sets no LimitNOFILE); TCP connections that never
    complete a handshake are held open_timeout (10 s) each, without limit (max_clients
    counts only handshakes that arrive). With them taking every descriptor, the link
    cannot dial ("cannot reach daemon: [Errno 24] Too many open files", every attempt)
    and the log fills with accept() tracebacks (~65 lines a second). Here a limit of 256
    and 300 idle connections; the daemon comes up after them."""
    daemon_port, proxy_port = free_port(), free_port()
    config = write_config(
        tmp_path / "c.toml",
        {
            "daemon": {"url": f"ws://127.0.0.1:{daemon_port}", "open_timeout": 2.0},
            "reconnect": {"base": 0.1, "factor": 1.0, "cap": 0.2},
            "storage": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
            "proxy": {"listen": f"127.0.0.1:{proxy_port}"},
            "log": {"format": "json"},
        },
    )
    recorder = subprocess.Popen(
        [sys.executable, "-m", "recorder", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=with_files(256),
    )
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", proxy_port)).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the proxy never listened"
                time.sleep(0.05)  # nothing to wait on but the port: polled
        for _ in range(300):
            conn = socket.create_connection(("127.0.0.1", proxy_port))
            conn.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
            idle.append(conn)
        dialled = asyncio.run(daemon_dialled(daemon_port, within=5.0))
    finally:
        for conn in idle:
            conn.close()
        recorder.terminate()
        recorder.wait(TIMEOUT)
    assert dialled, "the link could not dial while idle clients held the proxy's port"


async def daemon_dialled(port: int, *, within: float) -> bool:
    """Whether the recorder's link dials a daemon that listens from now on, in time."""
    dialled = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        dialled.set()
        async for _ in ws:
            pass

    async with serve(handler, "127.0.0.1", port):
        try:
            await asyncio.wait_for(dialled.wait(), within)
        except TimeoutError:
            return False
    return True


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


class StubbornDaemon(SlowNetworkDaemon):
    """Sends stream chunks to every connection as fast as it is let, answers pings,
    and never answers a close."""

    def __init__(self) -> None:
        super().__init__(size=0, rate=1 << 30)
        self.answers_close = False

    async def speak(self, send: Any, number: int, writer: asyncio.StreamWriter) -> None:
        for i in itertools.count():
            if writer.is_closing():
                return
            await send(ws_frame(1, chunk("session_firehose", f"{i} " + "x" * 2000)), 1 << 30)


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
    daemon = StubbornDaemon()
    proxy_port = free_port()

    async def scenario() -> float:
        server = await asyncio.start_server(daemon.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = write_config(
            tmp_path / "c.toml",
            {
                "daemon": {"url": f"ws://127.0.0.1:{port}"},
                "heartbeat": {"interval": 60.0, "timeout": 60.0},
                "storage": {"url": f"sqlite:///{tmp_path / 'r.db'}", "shutdown_timeout": 3.0},
                "proxy": {"listen": f"127.0.0.1:{proxy_port}"},
                "log": {"format": "json"},
            },
        )
        recorder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "recorder",
            "run",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert recorder.stdout is not None
        ui: socket.socket | None = None
        try:
            async with asyncio.timeout(TIMEOUT):
                while b"proxy listening" not in await recorder.stdout.readline():
                    pass
            ui = await asyncio.to_thread(deaf_client, f"ws://127.0.0.1:{proxy_port}")
            await asyncio.to_thread(wait_backed_up, [ui])
            recorder.terminate()
            stopped = time.monotonic()
            try:
                await asyncio.wait_for(recorder.communicate(), 3.0 + 8.0)
            except TimeoutError:
                pass
            return time.monotonic() - stopped
        finally:
            if recorder.returncode is None:
                recorder.kill()
                await recorder.wait()
            if ui is not None:
                ui.close()
            for writer in daemon.writers:
                writer.transport.abort()
            server.close()
            await asyncio.gather(*daemon.handlers, return_exceptions=True)

    took = asyncio.run(scenario())
    assert took < 3.0 + 1.0, f"the process exited {took:.1f} s after SIGTERM"


async def test_idle_connections_to_the_metrics_port_are_bounded(
    make_config: Callable[..., Config],
) -> None:
    """The same on metrics.listen: every accepted connection waited 10 s for its
    request, without limit. Past metrics.MAX_CONNECTIONS a new one is closed at once,
    and a scraper asks again once the idle ones have gone."""
    from recorder.service.metrics import MAX_CONNECTIONS, serve_metrics

    async with running(make_config("ws://127.0.0.1:9")) as svc:
        server = await serve_metrics(svc.snapshot, None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(T):
                assert await answered(reader) == b""  # closed without an answer
            writer.close()
            for _, idle_writer in idle:
                idle_writer.close()
            async with asyncio.timeout(T):
                while True:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"GET /metrics HTTP/1.1\r\nHost: r\r\n\r\n")
                    answer = await answered(reader)
                    writer.close()
                    if answer:  # the idle ones are gone once their handlers have seen it
                        break
            assert answer.startswith(b"HTTP/1.1 200")
        finally:
            server.close()


async def answered(reader: asyncio.StreamReader) -> bytes:
    """What the server answered before closing; nothing when it reset the connection."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""
