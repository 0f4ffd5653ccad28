"""`recorder run` with ``[web] listen``: the console served by the service, from its own
event loop, over what the service records, and stopped with it.

Real parts: the simulated daemon on port 0, the real service in this loop (and as a
subprocess for its signals), the console's HTTP on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from recorder.simulator.daemon import Simulator
from recorder.simulator.options import SimulatorOptions
from tests.conftest import TIMEOUT, proxy_recording_config, running, write_config
from tests.helpers import recorder_process, wait_until
from tests.postmortem_recording import spawn_request, status_of
from tests.proxy_peers import proxy_url


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET on 127.0.0.1: status, headers (lower-cased names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status.split()[1]), fields, body


async def test_the_service_serves_the_console_of_what_it_records(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    opts = SimulatorOptions(port=0, chunk_delay=0.001, seed=3, fail_rate=0.0)
    async with Simulator(opts) as sim:
        config = proxy_recording_config(tmp_path, sim.url, db, web={"listen": "127.0.0.1:0"})
        async with running(config) as svc:
            assert svc.console is not None
            port = int(svc.console.url.rstrip("/").rsplit(":", 1)[1])
            async with connect(proxy_url(svc)) as ui:
                await ui.recv()  # the hello
                await ui.send(json.dumps(spawn_request("web_1", "Seen in the console")))
                sid = await status_of(ui, None, "completed")

            async def listed() -> bool:
                code, _, body = await http_get(port, "/api/sessions")
                return code == 200 and sid in [s["id"] for s in json.loads(body)["sessions"]]

            await wait_until(svc, listed, timeout=TIMEOUT)
            code, headers, page = await http_get(port, "/sessions/" + sid)
            assert code == 200 and "Seen in the console" in page.decode()
            assert "default-src 'none'" in headers["content-security-policy"]
            # A browser that sent half a request holds no stop: the console is cut
            # after its grace, well inside the service's shutdown_timeout.
            _, stuck = await asyncio.open_connection("127.0.0.1", port)
            stuck.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            await stuck.drain()
            t0 = time.monotonic()
        assert svc.exit_code == 0 and time.monotonic() - t0 < 5
        stuck.close()
        with pytest.raises(ConnectionRefusedError):  # stopped with the service
            await asyncio.open_connection("127.0.0.1", port)


async def test_the_console_leaves_the_services_signals_alone(tmp_path: Path) -> None:
    """uvicorn takes SIGTERM and SIGINT when it serves on its own; inside the service it
    must not: SIGTERM still stops the service cleanly, through its own stop."""
    opts = SimulatorOptions(port=0, seed=3)
    async with Simulator(opts) as sim:
        config = write_config(
            tmp_path / "c.toml",
            {
                "daemon": {"url": sim.url},
                "storage": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
                "web": {"listen": "127.0.0.1:0"},
                "log": {"format": "json"},
            },
        )
        proc = await recorder_process("run", "-c", str(config), merge_stderr=True)
        assert proc.stdout is not None
        said: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while not any("web console listening" in line for line in said):
                said.append((await proc.stdout.readline()).decode())
            url = re.search(r"http://127\.0\.0\.1:(\d+)/", said[-1])
            assert url is not None
            assert (await http_get(int(url.group(1)), "/"))[0] == 200
            proc.send_signal(signal.SIGTERM)
            rest = (await proc.stdout.read()).decode()
            assert await proc.wait() == 0
        assert "recorder stopped" in rest and "Traceback" not in rest + "".join(said)
