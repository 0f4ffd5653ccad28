"""The unit file and the service's conversation with systemd (sd_notify)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from recorder.service.notify import Notifier
from recorder.service.watch import watch

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "orchestrator-recorder.service"


def installed_unit(tmp_path: Path) -> Path:
    """The unit as installed: ExecStart pointing at this checkout's recorder."""
    recorder = Path(sys.executable).with_name("recorder")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/recorder", str(recorder)))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_verifies_and_its_exposure_is_low(tmp_path: Path) -> None:
    unit = installed_unit(tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:]
    score = security.stdout.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0]
    assert float(score) <= 2.0
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "KillMode=mixed", "RestartPreventExitStatus=2"):
        assert line in text


def test_notifier_writes_datagrams_to_an_abstract_socket() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(f"\0recorder-test-notify-{os.getpid()}")
        name = "@" + sock.getsockname()[1:].decode()
        notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog == 2.0
        assert notifier.send(READY=1, STATUS="hello")
        assert sock.recv(1024) == b"READY=1\nSTATUS=hello"
    assert not Notifier({}).send(READY=1)
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog is None


class Listener:
    """A NOTIFY_SOCKET for a real `recorder run`: the messages, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)
        self.path = path

    def next(self) -> dict[str, str]:
        data = self.sock.recv(65536).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def until(self, key: str) -> list[dict[str, str]]:
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if key in message:
                return seen


def start(tmp_path: Path, config: Path, notify: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "recorder", "run", "--config", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": str(notify), **env},
        stdout=open(tmp_path / "recorder.log", "wb"),
        stderr=subprocess.STDOUT,
    )


def test_the_notify_sequence_and_a_reload(tmp_path: Path, config_file: Callable[..., Path]) -> None:
    config = config_file()
    listener = Listener(tmp_path / "notify")
    proc = start(tmp_path, config, listener.path, WATCHDOG_USEC="400000")
    try:
        ready = listener.until("READY")[-1]
        assert "cannot reach the daemon" in ready["STATUS"] or "reconnecting" in ready["STATUS"]
        assert "WATCHDOG" in listener.until("WATCHDOG")[-1]
        # SIGHUP with a broken file: the old configuration stays, and it says it reloaded.
        config.write_text("[daemon\n")
        proc.send_signal(signal.SIGHUP)
        assert listener.until("RELOADING")[-1]["RELOADING"] == "1"
        assert "READY" in listener.until("READY")[-1]
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING" in listener.until("STOPPING")[-1]
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    log = [json.loads(line) for line in (tmp_path / "recorder.log").read_text().splitlines()]
    refused = [
        e for e in log if e["event"] == "configuration not reloaded; keeping the running one"
    ]
    assert len(refused) == 1 and "not valid TOML" in refused[0]["error"]


def test_the_watchdog_stops_while_the_loop_is_blocked() -> None:
    """A service whose loop stops keeping time gets no WATCHDOG=1 until it recovers."""
    link = SimpleNamespace(
        state="connected", safe_url="ws://x", since_us=0, retry_at_us=None, last_error=None
    )
    writer = SimpleNamespace(committed=0, perform=lambda op: asyncio.sleep(0))
    service = SimpleNamespace(link=link, writer=writer, proxy=None)
    sent: list[dict[str, str | int]] = []
    pinged = asyncio.Event()

    class Recording(Notifier):
        def send(self, **fields: str | int) -> bool:
            sent.append(fields)
            if "WATCHDOG" in fields:
                pinged.set()
            return True

    notifier = Recording({"WATCHDOG_USEC": "100000"})  # a ping every 0.05 s

    async def scenario() -> None:
        task = asyncio.create_task(watch(service, notifier))  # type: ignore[arg-type]
        await asyncio.wait_for(pinged.wait(), 10)
        sent.clear()
        pinged.clear()
        time.sleep(0.3)  # noqa: ASYNC251 - the point: the loop is blocked for six intervals
        await asyncio.wait_for(pinged.wait(), 10)  # it recovers...
        assert "WATCHDOG" not in sent[0]  # ...but the wake-up after the block pinged nothing
        task.cancel()

    asyncio.run(scenario())
