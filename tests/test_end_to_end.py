"""The whole recorder against the simulated daemon: what the daemon said is what we stored."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.config import Config
from recorder.db.migrations import head_revision
from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.simulator import JournalEntry, Simulator, SimulatorOptions
from tests.conftest import running, write_config
from tests.helpers import (
    cli_json_lines,
    frame_bytes,
    query,
    recorder_process,
    wait_for_frame,
    wait_until,
)


def as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def assert_matches_journal(records: list[dict[str, Any]], journal: list[JournalEntry]) -> None:
    """Per connection, in order: what the simulator sent is what came in, and vice versa."""
    by_conn: dict[int, list[dict[str, Any]]] = {}
    for rec in records:
        by_conn.setdefault(rec["connection_id"], []).append(rec)
    sim_conns = sorted({e.conn for e in journal})
    assert len(by_conn) == len(sim_conns)
    for ours, theirs in zip(sorted(by_conn), sim_conns, strict=True):
        recs = by_conn[ours]
        assert [r["seq"] for r in recs] == list(range(recs[0]["seq"], recs[0]["seq"] + len(recs)))
        got_in = [frame_bytes(r) for r in recs if r["direction"] == "in"]
        got_out = [frame_bytes(r) for r in recs if r["direction"] == "out"]
        sent = [as_bytes(e.data) for e in journal if e.conn == theirs and e.direction == "sent"]
        received = [
            as_bytes(e.data) for e in journal if e.conn == theirs and e.direction == "received"
        ]
        assert got_in == sent, f"connection {ours}: frames from the daemon differ"
        assert got_out == received, f"connection {ours}: frames to the daemon differ"


async def test_five_sessions_two_forced_disconnects_every_frame_byte_exact(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    opts = SimulatorOptions(
        port=0,
        sessions=5,
        session_interval=0.05,
        wait_for_client=True,
        chunk_delay=0.02,
        seed=11,
        fail_rate=0.4,
        status_interval=0.05,
        disconnect_after=6,
        disconnects=2,
    )
    async with Simulator(opts) as sim:
        async with running(make_config(sim.url)) as svc:
            await sim.wait_sessions_done(timeout=30)
            await sim.wait_connections(3, timeout=30)
            final = {sid: s.status for sid, s in sim.sessions.items()}

            async def index_caught_up() -> bool:
                rows = await query(svc, "select id, status from sessions")
                return {r.id: r.status for r in rows} == final

            # The recorder may have missed final broadcasts while disconnected; its
            # resync after reconnecting must heal the index.
            await wait_until(svc, index_caught_up, timeout=30)
        # Stopped: the link closed with a handshake, so every frame the simulator
        # sent before its close frame has been received and committed.
    assert sim.forced_disconnects == 2
    assert all(status in TERMINAL_STATUSES for status in final.values())

    records = await asyncio.to_thread(
        cli_json_lines, ["frames", "--database", str(db_path), "--format", "jsonl", "--limit", "0"]
    )
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert_matches_journal(records, sim.journal)
    assert {r["opcode"] for r in records} == {"text"}
    for r in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["received_at"])
        assert r["size"] == len(frame_bytes(r))

    sessions = await asyncio.to_thread(
        cli_json_lines, ["sessions", "--database", str(db_path), "--json", "--limit", "0"]
    )
    assert {s["id"]: s["status"] for s in sessions} == final
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["sessions", "--database", str(db_path)]
    )
    for sid, status in final.items():
        assert re.search(rf"{sid}\s+{status}\b", result.output)
    conns = await asyncio.to_thread(
        CliRunner().invoke, cli, ["status", "--database", str(db_path), "--json"]
    )
    status = json.loads(conns.output)
    assert status["frames"] == len(records) and status["sessions"] == 5 and not status["connected"]


class SimulatorProcess:
    """``recorder simulate`` in its own process, so it can be frozen with SIGSTOP."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recorder", "simulate", "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.search(r"ws://[\d.]+:(\d+)", line)
        assert match, line
        self.url = f"ws://127.0.0.1:{match.group(1)}"

    def close(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sim_process() -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess()
    yield sim
    sim.close()


async def test_frozen_daemon_is_noticed_and_the_link_recovers(
    make_config: Callable[..., Config], sim_process: SimulatorProcess
) -> None:
    interval, timeout = 0.4, 0.4
    config = make_config(
        sim_process.url,
        heartbeat={"interval": interval, "timeout": timeout},
        daemon={"open_timeout": 0.5},
        reconnect={"base": 0.05, "cap": 0.2},
    )
    async with running(config) as svc:
        ping = await wait_for_frame(svc, "type = 'ping' and direction = 'out'")
        await wait_for_frame(svc, "type = 'pong' and id > :id", id=ping.id)
        os.kill(sim_process.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        await asyncio.wait_for(svc.link.disconnected.wait(), 10)
        noticed = time.monotonic() - frozen_at
        row = (await query(svc, "select * from connections where id = 1"))[0]
        os.kill(sim_process.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(svc.link.connected.wait(), 15)
        await wait_for_frame(svc, "connection_id = 2 and type = 'health_check_response'")
    assert noticed <= interval + timeout + 0.3, noticed
    assert "heartbeat timeout" in (row.error or "") or row.close_code == 1011
    assert row.closed_by == "local"


def test_sigterm_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM in the middle of a firehose: every frame the daemon sent before the close is stored."""

    async def scenario() -> tuple[int, list[JournalEntry], str]:
        opts = SimulatorOptions(port=0, firehose=300_000, chunk_delay=0)
        async with Simulator(opts) as sim:
            db = tmp_path / "rec.db"
            cfg = write_config(
                tmp_path / "c.toml",
                {
                    "daemon": {"url": sim.url},
                    "storage": {"url": f"sqlite:///{db}", "commit_interval": 1.0},
                    "proxy": {"enabled": False},
                    "log": {"format": "json"},
                },
            )
            proc = await recorder_process("run", "--config", str(cfg), merge_stderr=True)
            await sim.wait_connections(1, timeout=30)
            # Let a good part of the firehose be in flight, then stop the recorder.
            await sim.wait_frames_sent(50_000, timeout=30)
            proc.send_signal(signal.SIGTERM)
            err, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode is not None
            return proc.returncode, list(sim.journal), err.decode()

    code, journal, log = asyncio.run(scenario())
    assert code == 0, log
    assert '"recorder stopped"' in log
    sent = [e for e in journal if e.direction == "sent"]
    assert 50_000 <= len(sent) < 300_002, "the firehose must have been cut short by the stop"
    records = cli_json_lines(
        ["frames", "--database", str(tmp_path / "rec.db"), "--format", "jsonl", "--limit", "0"]
    )
    assert_matches_journal(records, journal)


@dataclass
class Wheel:
    """The project built into a wheel and installed from it into a new venv, and a
    directory unrelated to the source tree to run it from."""

    root: Path
    venv: Path
    elsewhere: Path
    env: dict[str, str]

    def run(self, code: str) -> subprocess.CompletedProcess[str]:
        """``code`` run by the venv's python, from elsewhere."""
        return subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            capture_output=True,
            text=True,
            cwd=self.elsewhere,
            env=self.env,
            check=True,
        )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    """`pip install .` into a new venv, once for the module's tests."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    root = Path(__file__).resolve().parent.parent
    venv = tmp_path / "venv"
    # The test environment's site-packages supply pip and the dependencies (no
    # network); the project itself is built into a wheel and installed from it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    base_site = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pth = next((venv / "lib").glob("python3*/site-packages"))
    (pth / "parent-env.pth").write_text(base_site + "\n")
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
    ]
    subprocess.run(
        [*pip, "--force-reinstall", str(root)], check=True, capture_output=True, cwd=tmp_path
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RECORDER_CONFIG")}
    return Wheel(root, venv, elsewhere, env)


def test_the_installed_copy_finds_its_migrations(wheel: Wheel) -> None:
    root = wheel.root
    probe = wheel.run("import recorder.db.migrations as s; print(s.__file__, s.migrations_dir())")
    assert str(root / "recorder") not in probe.stdout, "the test must run the installed copy"
    assert "recorder/migrations" in probe.stdout


def test_the_wheel_carries_every_subpackage(wheel: Wheel) -> None:
    """They are listed by hand (pyproject.toml); every one of the source tree is there."""
    root = wheel.root
    source_packages = sorted(
        "recorder." + str(init.parent.relative_to(root / "recorder")).replace("/", ".")
        for init in (root / "recorder").glob("*/__init__.py")
    )
    installed = wheel.run(
        "import pkgutil, recorder; print(' '.join(sorted(m.name for m in"
        " pkgutil.iter_modules(recorder.__path__, 'recorder.') if m.ispkg)))"
    ).stdout.split()
    assert [p for p in installed if p != "recorder.migrations"] == source_packages


def test_the_wheel_carries_the_web_consoles_files(wheel: Wheel) -> None:
    """Its templates, scripts and style sheets are package data: every file of the
    source tree's, so that a page added later cannot be left out of the wheel."""
    here = Path(__file__).parent.parent / "recorder" / "web"
    wanted = sorted(
        f"{folder}/{f.name}"
        for folder in ("static", "templates")
        for f in (here / folder).iterdir()
    )
    probe = wheel.run(
        "import importlib.resources as r, recorder.web.render as p;"
        " p.TEMPLATES.get_template('sessions.html');"
        " w = r.files('recorder.web');"
        " print(p.__file__, *sorted(f'{d}/{f.name}' for d in ('static', 'templates')"
        " for f in (w / d).iterdir()))"
    )
    assert str(wheel.root / "recorder") not in probe.stdout, "the test must run the installed copy"
    assert probe.stdout.split()[1:] == wanted, probe.stderr


def test_wheel_carries_the_migrations(wheel: Wheel) -> None:
    """`recorder db upgrade`, installed from the wheel, from an unrelated directory."""
    db = wheel.elsewhere / "new.db"
    result = subprocess.run(
        [str(wheel.venv / "bin" / "recorder"), "db", "upgrade", "--database", str(db)],
        capture_output=True,
        text=True,
        cwd=wheel.elsewhere,
        env=wheel.env,
    )
    assert result.returncode == 0, result.stderr
    assert f"upgraded empty database -> {head_revision()}" in result.stdout
    assert oct(db.stat().st_mode & 0o777) == "0o600"
