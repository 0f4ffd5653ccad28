"""The writer processes under faults: a dying child, a killed service, a failing disk."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import structlog
from sqlalchemy.exc import OperationalError

from recorder.config import Config
from recorder.pipeline import ops
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config

TIMEOUT = 30


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_killed_child_is_noticed_at_once_and_the_loss_is_exact(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    async with Simulator(
        SimulatorOptions(port=0, firehose=2_000_000, chunk_delay=0, journal=False)
    ) as sim:
        config = make_config(sim.url, proxy={"enabled": False})
        with structlog.testing.capture_logs() as logs:
            async with running(config) as svc:
                await sim.wait_frames_sent(50_000, timeout=TIMEOUT)
                classifier = svc.writer._process.pid
                database = children(classifier)[0]
                os.kill(database, signal.SIGKILL)
                killed = time.monotonic()
                await asyncio.wait_for(svc.link.disconnected.wait(), TIMEOUT)
                noticed = time.monotonic() - killed
            assert svc.exit_code == 1
    assert noticed < 1.0, noticed
    (failed,) = [e for e in logs if e["event"] == "database writer failed; frames were lost"]
    with sqlite3.connect(db_path) as conn:
        (stored,) = conn.execute("select count(*) from frames").fetchone()
    # Exactly what was received and not stored: the database itself was counted.
    assert failed["stored"] == stored and failed["lost"] == failed["received"] - stored > 0


def test_sigkill_takes_the_children_and_leaves_a_prefix(tmp_path: Path) -> None:
    """After SIGKILL under a firehose the children are gone at once, the database is a
    prefix of what was sent (no gap in seq), and the loss is within the documented bound."""
    queue, batch = 2000, 500

    async def scenario() -> tuple[int, list[int], str]:
        async with Simulator(
            SimulatorOptions(port=0, firehose=1_000_000, chunk_delay=0, journal=False)
        ) as sim:
            cfg = write_config(
                tmp_path / "c.toml",
                {
                    "daemon": {"url": sim.url},
                    "storage": {
                        "url": f"sqlite:///{tmp_path / 'rec.db'}",
                        "queue_max_frames": queue,
                        "batch_size": batch,
                    },
                    "proxy": {"enabled": False},
                    "log": {"format": "json"},
                },
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "recorder",
                "run",
                "--config",
                str(cfg),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            await sim.wait_frames_sent(100_000, timeout=TIMEOUT)
            kids = children(proc.pid) + [g for c in children(proc.pid) for g in children(c)]
            proc.kill()
            err, _ = await proc.communicate()
            sent = sim.frames_sent
            return sent, kids, err.decode()

    sent, kids, err = asyncio.run(scenario())
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kids and not any(alive(pid) for pid in kids), "a writer process outlived the service"
    assert "Traceback" not in err
    with sqlite3.connect(tmp_path / "rec.db") as conn:
        seqs = [
            s for (s,) in conn.execute("select seq from frames where connection_id = 1 order by id")
        ]
    assert seqs == list(range(1, len(seqs) + 1))  # a prefix: no gap
    # Lost: the queue, the batches in flight, and what the kernel's socket buffers held.
    rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    bound = queue + ops_in_flight() * batch + (rmem + wmem) // 150
    assert sent - (len(seqs) - 1) <= bound  # the link's first frame is the hello


def ops_in_flight() -> int:
    from recorder.pipeline.writer import IN_FLIGHT

    return IN_FLIGHT


class FailingDatabase:
    """A database whose first ``failures`` writes fail the way SQLAlchemy reports them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def run(self, fn: Any, *args: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OperationalError(
                "INSERT INTO frames VALUES (?)",
                [("SECRET-FRAME-PAYLOAD" * 200,)],
                Exception("disk I/O error"),
            )

    async def reopen(self) -> None:
        pass

    def wrote(self, rows: Any) -> None:
        pass


async def test_a_failing_disk_is_retried_within_seconds_and_logged_short() -> None:
    frame = (1, 1, IN, 1, 1, True, b'{"type":"x","secret":"SECRET-FRAME-PAYLOAD"}')
    rows, index = Classifier().rows_and_index([frame])
    assert ops.RETRY_CAP <= 2.0
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        store = SimpleNamespace(write_batch=None)  # what FailingDatabase.run is handed
        await ops.WriteRows(rows, index).run(FailingDatabase(3), store)  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.5 + 1 + 2 + 1  # 0.5, 1, 2 s waits
    events = [e["event"] for e in logs]
    assert events == ["database write failed; retrying", "database writes resumed"]
    assert "SECRET" not in json.dumps(logs) and all(len(json.dumps(e)) < 600 for e in logs)
