"""The writer's processes under faults: a child killed, the service killed, a database
locked while the watchdog pings, the start after a run whose writer failed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import structlog

from recorder.config import Config
from recorder.pipeline.ops import Ping, WriteFrames
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config
from tests.helpers import children, frames_for, grandchildren, recorder_process

TIMEOUT = 30


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
            proc = await recorder_process("run", "--config", str(cfg), merge_stderr=True)
            await sim.wait_frames_sent(100_000, timeout=TIMEOUT)
            kids = children(proc.pid) + grandchildren(proc.pid)
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


async def test_a_ping_is_answered_while_a_write_waits_on_a_locked_database(
    db_path: Path,
) -> None:
    """The watchdog's Ping goes down the line behind a batch that waits (for a lock,
    or a full disk, retried for as long as it lasts): the database process answers it
    as soon as it reads it, and the batch is still committed once the lock goes."""
    writer = Writer(f"sqlite+aiosqlite:///{db_path}", log_format="json")
    await writer.start()
    try:
        cid = await writer.open_connection("link", "ws://daemon")
        with closing(sqlite3.connect(db_path, isolation_level=None)) as holder:
            holder.execute("BEGIN EXCLUSIVE")
            writes = [
                asyncio.create_task(writer.perform(WriteFrames(frames_for(cid, 5))))
                for _ in range(3)
            ]
            # The batches go down the line while the first Ping is answered: the
            # later ones are behind them.
            for _ in range(3):
                # Well within SQLite's busy timeout (10 s): the writes are still waiting.
                await asyncio.wait_for(writer.perform(Ping()), 5)
            assert not any(w.done() for w in writes)
            holder.execute("ROLLBACK")
        tallies = await asyncio.wait_for(asyncio.gather(*writes), TIMEOUT)
        assert [t[(cid, IN)][0] for t in tallies] == [5, 5, 5]
    finally:
        await writer.close()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("select count(*) from frames").fetchone() == (15,)


async def test_a_writer_that_failed_leaves_the_next_start_its_quick_check(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    """The instance lock says "stopped cleanly" only after a clean stop: a run whose
    database process died (as on a corrupt file) exits 1, and the next start checks."""
    config = make_config("ws://127.0.0.1:9", proxy={"enabled": False})
    async with running(config) as svc:
        assert not svc.unclean
        (database,) = children(svc.writer._process.pid)
        os.kill(database, signal.SIGKILL)
        await asyncio.wait_for(svc.writer.queue.not_empty.wait(), TIMEOUT)
    assert svc.exit_code == 1
    async with running(config) as again:
        assert again.unclean
    assert again.exit_code == 0
    async with running(config) as third:
        assert not third.unclean
