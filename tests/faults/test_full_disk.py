"""A full disk is a state, not a loop: a start waits for room, a stop ends in time
and says exactly what it lost. The disk is a tmpfs of a few MiB mounted for the test
(skipped where mounting is not permitted)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

from recorder.service.space import FULL_BELOW, disk_full, room_again
from recorder.service.stopping import Loss, settle
from recorder.simulator import Simulator, SimulatorOptions
from tests import full_disk
from tests.conftest import write_config
from tests.full_disk import fill
from tests.helpers import recorder_process
from tests.service_process import Listener

TIMEOUT = 30

# A 4 MiB tmpfs: pytest finds a fixture by its name in the module, and a parameter of
# that name would shadow an imported one.
small_disk = full_disk.small_disk


def frames_in(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("select count(*) from frames").fetchone()[0])


def events(log: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith(b"{")]


def recorder(config: Path, notify: Path, out: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "recorder", "run", "--config", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": str(notify), **env},
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )


def full_disk_config(tmp_path: Path, config_file: Callable[..., Path], disk: Path) -> Path:
    """A recorder whose database is on ``disk``, created there and stopped cleanly;
    then ``disk`` is filled up."""
    config = config_file(storage={"url": f"sqlite:///{disk / 'recorder.db'}"})
    listener = Listener(tmp_path / "first.notify")
    first = recorder(config, listener.path, tmp_path / "first.log")
    try:
        listener.until("READY")
        first.send_signal(signal.SIGTERM)
        assert first.wait(TIMEOUT) == 0
    finally:
        first.kill()
    fill(disk)
    return config


def test_a_start_on_a_full_disk_waits_for_room_then_starts(
    tmp_path: Path, config_file: Callable[..., Path], small_disk: Path
) -> None:
    """`recorder run` on a full disk exited 1 in 0.2 s, every time: a restart loop
    under Restart=on-failure. Now it says "disk full" once, tells systemd what it
    waits for (READY=1, STATUS=, WATCHDOG=1 all along), and starts when room comes."""
    config = full_disk_config(tmp_path, config_file, small_disk)
    listener = Listener(tmp_path / "rec.notify")
    log = tmp_path / "rec.log"
    proc = recorder(config, listener.path, log, WATCHDOG_USEC="400000")  # every 0.2 s
    try:
        assert listener.until("READY")[-1]["STATUS"].startswith("waiting for disk space: ")
        for _ in range(3):
            message = listener.until("WATCHDOG")[-1]
            assert message["STATUS"].startswith("waiting for disk space: ")
        assert proc.poll() is None
        (small_disk / "filler").unlink()
        while (status := listener.until("READY")[-1]["STATUS"]).startswith("waiting"):
            pass
        assert "127.0.0.1:9" in status  # the link's state: it has started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
    lines = events(log.read_bytes())
    said = [e for e in lines if e["event"].startswith("disk full")]
    assert len(said) == 1 and said[0]["level"] == "error"
    assert said[0]["database"] == str(small_disk / "recorder.db")
    names = [e["event"] for e in lines]
    assert names.index("disk has room again; starting") < names.index("recorder started")
    assert b"Traceback" not in log.read_bytes()


def test_a_stop_while_waiting_for_room_is_clean(
    tmp_path: Path, config_file: Callable[..., Path], small_disk: Path
) -> None:
    config = full_disk_config(tmp_path, config_file, small_disk)
    listener = Listener(tmp_path / "rec.notify")
    log = tmp_path / "rec.log"
    proc = recorder(config, listener.path, log)
    try:
        listener.until("READY")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
    assert [e["level"] for e in events(log.read_bytes())] == ["error"]  # "disk full", only


@asynccontextmanager
async def recording_onto_a_full_disk(
    tmp_path: Path, disk: Path, shutdown_timeout: float
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`recorder run` recording a firehose into a database on ``disk`` until the disk
    is full and its writes are being retried (the queue then fills behind them)."""
    async with Simulator(
        SimulatorOptions(port=0, firehose=2_000_000, chunk_delay=0, journal=False)
    ) as sim:
        config = write_config(
            tmp_path / "c.toml",
            {
                "daemon": {"url": sim.url},
                "storage": {
                    "url": f"sqlite:///{disk / 'recorder.db'}",
                    "shutdown_timeout": shutdown_timeout,
                },
                "proxy": {"enabled": False},
                "log": {"format": "json"},
            },
        )
        proc = await recorder_process("run", "--config", str(config), merge_stderr=True)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(TIMEOUT):
                while b'"database write failed; retrying"' not in await proc.stdout.readline():
                    pass
            fill(disk)  # what the database left, if anything
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_stop_on_a_full_disk_ends_in_time_and_says_what_was_lost(
    tmp_path: Path, small_disk: Path
) -> None:
    """SIGTERM with the disk full: the drain timed out, "frames were lost", then the
    heartbeat row and the writer's stop waited for ever on a batch retried for ever
    (9.9 minutes, until a second signal). Now the stop ends within shutdown_timeout:
    the writer processes are killed, the database counted, and the line is true."""
    async with recording_onto_a_full_disk(tmp_path, small_disk, 2.0) as proc:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        took = time.monotonic() - started
        assert proc.returncode == 1
    assert took < 2.0 + 2.0, took
    (lost,) = [
        e for e in events(out) if e["event"] == "writer did not drain in time; frames were lost"
    ]
    (small_disk / "filler").unlink()  # room to open the database again
    assert lost["stored"] == frames_in(small_disk / "recorder.db") > 0
    assert lost["lost"] == lost["received"] - lost["stored"] > 0


async def test_a_second_signal_on_a_full_disk_says_what_the_database_holds(
    tmp_path: Path, small_disk: Path
) -> None:
    """The second signal stops at once and says what is true: the writer processes
    killed first, then the database counted."""
    async with recording_onto_a_full_disk(tmp_path, small_disk, 60.0) as proc:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        took = time.monotonic() - started
        assert proc.returncode == 1
    assert took < 5.0, took
    (forced,) = [e for e in events(out) if e["event"].startswith("stopping at once")]
    assert forced["event"].endswith("frames were not committed")
    (small_disk / "filler").unlink()
    assert forced["stored"] == frames_in(small_disk / "recorder.db") > 0
    assert forced["lost"] == forced["received"] - forced["stored"] > 0


def test_what_counts_as_a_full_disk_and_as_room_again() -> None:
    # SQLite often says only "disk I/O error": the free space decides then.
    assert disk_full("OperationalError: disk I/O error", 0)
    assert not disk_full("OperationalError: disk I/O error", 50 << 20)
    assert not disk_full("OperationalError: disk I/O error", None)
    assert disk_full("OperationalError: database or disk is full", 50 << 20)  # a quota
    # Room again: enough to open, and more than when the start failed.
    assert not room_again(FULL_BELOW - 1, 0)
    assert room_again(FULL_BELOW, 0)
    assert not room_again(50 << 20, 50 << 20)
    assert room_again((50 << 20) + FULL_BELOW, 50 << 20)
    assert not room_again(None, 0)


def test_what_a_stop_stored_is_what_the_database_holds_within_what_could_be() -> None:
    # 100 received, 60 confirmed, 20 in flight (20 more never left the queue).
    assert settle(100, 60, 20, 70) == Loss(100, 70)  # half the flight landed
    assert settle(100, 60, 20, 50) == Loss(100, 60)  # a purge took some of this run's
    assert settle(100, 60, 20, 95) == Loss(100, 80)  # at most what was shipped
    unknown = settle(100, 60, 20, None)
    assert unknown == Loss(100, 60, counted=False) and unknown.lost == 40
    assert "at most" in unknown.fields()["note"]
