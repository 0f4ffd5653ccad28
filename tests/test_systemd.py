"""The unit file and the service's conversation with systemd (sd_notify)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from recorder.config import Config
from recorder.pipeline.ops import WriteFrames
from recorder.protocol.frames import IN
from recorder.service.lifecycle import Service
from recorder.service.notify import Notifier
from recorder.service.watch import watch
from recorder.times import now_us
from tests.helpers import frozen, grandchildren, recorder_process
from tests.service_process import Listener, Recording

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
    assert verify.returncode == 0, verify.stderr
    warnings = verify.stderr.splitlines()
    if systemd_version() < 254:
        # The restart backoff's keys are systemd 254's: an older one says so and
        # ignores them (the unit stays valid, with a fixed RestartSec). Nothing else.
        warnings = [w for w in warnings if not newer_key(w)]
    assert warnings == [], verify.stderr
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
    # Restarts back off (systemd 254+): from RestartSec up to a minute.
    for line in ("Restart=on-failure", "RestartSec=2", "RestartSteps=5", "RestartMaxDelaySec=60"):
        assert f"\n{line}\n" in text


def systemd_version() -> int:
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    return int(out.split()[1])


def newer_key(warning: str) -> bool:
    """systemd before 254 on the restart backoff's keys."""
    return any(
        warning.endswith(f"Unknown key '{key}' in section [Service], ignoring.")
        or warning.endswith(f"Unknown key name '{key}' in section 'Service', ignoring.")
        for key in ("RestartSteps", "RestartMaxDelaySec")
    )


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
    from recorder.pipeline.writer_metrics import WriterMetrics
    from recorder.service.snapshot import LinkState, Snapshot
    from recorder.service.watch import Watched

    now = Snapshot(LinkState("connected", "ws://x", 0), None, 0, 0, 0, 0, WriterMetrics(), None)
    service = Watched(lambda: now, lambda: asyncio.sleep(0), lambda: asyncio.sleep(0))
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
        task = asyncio.create_task(watch(service, notifier))
        await asyncio.wait_for(pinged.wait(), 10)
        sent.clear()
        pinged.clear()
        time.sleep(0.3)  # noqa: ASYNC251 - the point: the loop is blocked for six intervals
        await asyncio.wait_for(pinged.wait(), 10)  # it recovers...
        assert "WATCHDOG" not in sent[0]  # ...but the wake-up after the block pinged nothing
        task.cancel()

    asyncio.run(scenario())


async def test_the_watchdog_goes_on_while_a_write_waits_on_a_locked_database(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    """A batch waiting for a locked database (or a full disk) is not a wedged service:
    the writer processes still answer, so WATCHDOG=1 goes on; the heartbeat row, which
    waits in line behind the batch, does not hold it up."""
    notifier = Recording({"WATCHDOG_USEC": "200000"})  # a ping every 0.1 s
    service = Service(make_config("ws://127.0.0.1:9", proxy={"enabled": False}), notifier)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        async with asyncio.timeout(30):
            await service.started.wait()
            await notifier.wait_watchdogs(1)
        writer = service.writer
        cid = await writer.open_connection("link", "ws://daemon")
        frames = [(cid, 1, IN, now_us(), time.monotonic_ns(), True, b'{"type":"x"}')]
        with closing(sqlite3.connect(db_path, isolation_level=None)) as holder:
            holder.execute("BEGIN EXCLUSIVE")
            write = asyncio.create_task(writer.perform(WriteFrames(frames)))
            seen = notifier.watchdogs
            # Well within SQLite's busy timeout (10 s): the batch is still waiting.
            await asyncio.wait_for(notifier.wait_watchdogs(seen + 3), 8)
            assert not write.done()
            holder.execute("ROLLBACK")
        assert (await asyncio.wait_for(write, 30))[(cid, IN)] == (1, len(frames[0][-1]))
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


def test_a_reload_that_fails_in_an_unexpected_way_still_says_ready(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    """RELOADING=1 is always followed by READY=1, or systemd shows the unit reloading
    for good: here the file cannot even be opened (a symbolic link loop)."""
    config = config_file()
    listener = Listener(tmp_path / "notify")
    proc = start(tmp_path, config, listener.path)
    try:
        listener.until("READY")
        config.unlink()
        config.symlink_to(config)
        proc.send_signal(signal.SIGHUP)
        listener.until("RELOADING")
        assert "READY" in listener.until("READY")[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    text = (tmp_path / "recorder.log").read_text()
    assert "Traceback" not in text and "never retrieved" not in text
    log = [json.loads(line) for line in text.splitlines()]
    (refused,) = [
        e for e in log if e["event"] == "configuration not reloaded; keeping the running one"
    ]
    assert "Too many levels of symbolic links" in refused["error"]


async def test_a_reload_during_the_stop_is_ignored(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    """SIGHUP once the stop has begun starts nothing (no new cleanup, no READY=1 after
    STOPPING=1)."""
    config = config_file(storage={"shutdown_timeout": 60})
    listener = Listener(tmp_path / "notify")
    proc = await recorder_process(
        "run",
        "--config",
        str(config),
        env={"NOTIFY_SOCKET": str(listener.path)},
        merge_stderr=True,
    )
    assert proc.stdout is not None
    try:
        await asyncio.to_thread(listener.until, "READY")
        # Freeze the database process: the stop cannot end before the SIGHUP is seen.
        with frozen(grandchildren(proc.pid)):
            proc.send_signal(signal.SIGTERM)
            before = await asyncio.to_thread(listener.until, "STOPPING")
            proc.send_signal(signal.SIGHUP)
            outcomes = ("reload ignored: the recorder is stopping", "configuration reloaded")
            async with asyncio.timeout(30):
                while (event := json.loads(await proc.stdout.readline())["event"]) not in outcomes:
                    pass
            assert event == outcomes[0]
            proc.send_signal(signal.SIGINT)  # nothing was lost: still a clean stop
            async with asyncio.timeout(30):
                await proc.stdout.read()
                assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    listener.sock.setblocking(False)
    after = []
    with contextlib.suppress(BlockingIOError):
        while True:
            after.append(listener.next())
    assert not [m for m in before + after if "RELOADING" in m]
