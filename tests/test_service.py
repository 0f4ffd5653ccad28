"""The service as an operator meets it: one per database, a truthful status, signals."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from websockets.asyncio.client import connect

from recorder.cli import cli
from recorder.config import Config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running
from tests.helpers import frozen, grandchildren
from tests.service_process import TIMEOUT, Recorder, Recording


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    started: list[Recorder] = []
    yield started
    for rec in started:
        if rec.proc.poll() is None:
            rec.proc.kill()
            rec.proc.wait()


def status(config: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_a_second_recorder_on_the_same_database_refuses(
    tmp_path: Path, config_file: Callable[..., Path], recorders: list[Recorder]
) -> None:
    config = config_file()
    first = Recorder(tmp_path, config, "first")
    recorders.append(first)
    first.ready()
    second = Recorder(tmp_path, config, "second")
    recorders.append(second)
    assert second.proc.wait(TIMEOUT) == 1
    (line,) = second.log()
    assert line["level"] == "error"
    assert line["event"].startswith(f"another recorder is running on {tmp_path / 'recorder.db'} ")
    assert f"PID {first.proc.pid} on {socket.gethostname()}" in line["event"]
    # It touched nothing: the first one's connection row is still open, not "unclean".
    assert status(config)["running"] is True
    rows = CliRunner().invoke(cli, ["connections", "--config", str(config), "--json"]).stdout
    assert all(c["closed_by"] != "service" for c in json.loads(rows))
    assert first.stop() == 0


def test_status_knows_a_killed_recorder_is_not_running(
    tmp_path: Path, config_file: Callable[..., Path], recorders: list[Recorder]
) -> None:
    config = config_file()
    rec = Recorder(tmp_path, config)
    recorders.append(rec)
    rec.ready()
    alive = status(config)
    assert alive["running"] is True and alive["recorder"]["pid"] == rec.proc.pid
    assert alive["proxy"]["listen"].startswith("127.0.0.1:")
    # The outage it is riding out (nothing listens at port 9), with its error.
    assert alive["link_state"] in ("waiting", "connecting")
    assert "cannot reach the daemon" in (alive["last_error"] or "")
    rec.proc.kill()
    rec.proc.wait()
    dead = status(config)
    assert dead["running"] is False and dead["connected"] is False
    text = CliRunner().invoke(cli, ["status", "--config", str(config)]).stdout
    assert text.startswith("recorder    not running (last heard from ")


async def test_status_shows_a_rejected_handshake_and_the_daemons_reason(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    async with Simulator(SimulatorOptions(port=0, token="right")) as sim:
        config = make_config(sim.url, daemon={"token": "wrong"})
        async with running(config) as svc:
            await asyncio.wait_for(svc.link.attempted.wait(), TIMEOUT)
            await svc.beat()
            result = await asyncio.to_thread(
                CliRunner().invoke, cli, ["status", "--config", str(tmp_path / "config.toml")]
            )
    assert result.exit_code == 0, result.output
    daemon = result.stdout.splitlines()[1]
    assert "the daemon rejected the handshake: HTTP 401" in daemon
    assert "jwt_invalid" in daemon and "never connected" not in daemon


async def test_a_second_signal_exits_at_once(
    tmp_path: Path, config_file: Callable[..., Path], recorders: list[Recorder]
) -> None:
    """With frames that cannot be committed (the database process frozen), a second
    signal during the drain exits 1 at once and says how many frames were lost."""
    async with Simulator(SimulatorOptions(port=0)) as sim:
        config = config_file(daemon={"url": sim.url}, storage={"shutdown_timeout": 60})
        rec = Recorder(tmp_path, config)
        recorders.append(rec)
        await asyncio.to_thread(rec.ready)
        listen = (await asyncio.to_thread(status, config))["proxy"]["listen"]
        async with connect(f"ws://{listen}") as ui:
            await ui.recv()  # the conversation is recorded from here
            with frozen(grandchildren(rec.proc.pid)):
                # Forwarded, then queued for a database process that cannot take it.
                await ui.send('{"type":"ping"}')
                await ui.recv()
                rec.proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(rec.listener.until, "STOPPING")
                started = time.monotonic()
                rec.proc.send_signal(signal.SIGINT)
                assert await asyncio.to_thread(rec.proc.wait, TIMEOUT) == 1
                assert time.monotonic() - started < 5
    forced = [e for e in rec.log() if e["event"].startswith("stopping at once on a second signal")]
    assert len(forced) == 1 and forced[0]["lost"] >= 1
    assert forced[0]["event"].endswith("frames were not committed")


def test_a_second_signal_with_nothing_to_lose_is_still_a_clean_stop(
    tmp_path: Path, config_file: Callable[..., Path], recorders: list[Recorder]
) -> None:
    """Two stop signals at once on an idle recorder: nothing was queued, so nothing is
    lost, and systemd must not see a failure (exit 0)."""
    rec = Recorder(tmp_path, config_file())
    recorders.append(rec)
    rec.ready()
    rec.proc.send_signal(signal.SIGTERM)
    rec.proc.send_signal(signal.SIGINT)
    assert rec.proc.wait(TIMEOUT) == 0
    assert rec.errors() == ""
    events = [e["event"] for e in rec.log()]
    assert not [e for e in events if "frames were not committed" in e]
    assert not [e for e in rec.log() if e["level"] == "error"]


def test_a_drain_timeout_with_nothing_queued_says_nothing_was_lost(
    tmp_path: Path, config_file: Callable[..., Path], recorders: list[Recorder]
) -> None:
    """A shutdown_timeout shorter than the writer takes to stop, on an idle recorder:
    the line said "frames were lost" beside lost 0, and the exit was 1 (found probing
    bad input). Nothing was queued: the stop is clean."""
    rec = Recorder(tmp_path, config_file(storage={"shutdown_timeout": 1e-9}))
    recorders.append(rec)
    rec.ready()
    rec.proc.send_signal(signal.SIGTERM)
    assert rec.proc.wait(TIMEOUT) == 0
    (late,) = [e for e in rec.log() if e["event"].startswith("writer did not")]
    assert late["event"] == "writer did not stop in time; every frame was committed"
    assert late["lost"] == 0 and late["level"] == "warning"


async def test_reloads_run_one_at_a_time_and_only_while_running(
    make_config: Callable[..., Config],
) -> None:
    """SIGHUPs in quick succession: one reload at a time, the ones asked for meanwhile
    folded into one more; none before the start or after the stop began; every
    RELOADING=1 followed by its READY=1; one cleanup schedule running at the end."""
    from recorder.service.lifecycle import Service

    notifier = Recording({})
    service = Service(make_config("ws://127.0.0.1:9", storage={"retention": "30d"}), notifier)
    service.request_reload()  # not started: nothing to reload
    assert service.reload_task is None
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.started.wait(), TIMEOUT)
        first = service.cleanup
        assert first is not None and first.scheduled
        notifier.sent.clear()
        for _ in range(3):
            service.request_reload()
        reloads = service.reload_task
        assert reloads is not None
        await asyncio.wait_for(reloads, TIMEOUT)
        kinds = [k for m in notifier.sent for k in ("RELOADING", "READY") if k in m]
        assert kinds in (["RELOADING", "READY"], ["RELOADING", "READY"] * 2)
        # The same schedule, its jobs replaced once each (runs in progress go on).
        assert service.cleanup is first and first.scheduled
        assert [j for j in first.job_ids if j != "interrupted"] == ["requests", "storage.retention"]
    finally:
        stop.set()
        assert await asyncio.wait_for(task, TIMEOUT) == 0
    service.request_reload()  # stopped: nothing to reload
    assert service.reload_task is reloads
    assert service.cleanup is None or not service.cleanup.scheduled


async def test_the_link_dials_at_once_when_the_proxy_reaches_the_daemon(
    make_config: Callable[..., Config],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # A long backoff: without the proxy's news the link would wait tens of seconds.
    config = make_config(
        f"ws://127.0.0.1:{port}", reconnect={"base": 30.0, "cap": 60.0, "factor": 1.0}
    )
    with structlog.testing.capture_logs() as logs:
        async with running(config) as svc:
            await asyncio.wait_for(svc.link.attempted.wait(), TIMEOUT)
            assert svc.link.state == "waiting" and svc.link.connections == 0
            async with Simulator(SimulatorOptions(port=port)):
                assert svc.proxy is not None
                async with connect(f"ws://127.0.0.1:{svc.proxy.port}") as ui:
                    await ui.recv()
                    await asyncio.wait_for(svc.link.connected.wait(), 10)
            assert svc.link.connections == 1
    # It was the proxy's news, not the end of the backoff, that started the dial.
    assert [e["event"] for e in logs].count("daemon reachable again; dialling now") == 1


async def test_metrics_parse_and_match_the_database(
    make_config: Callable[..., Config],
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.helpers import query

    async with Simulator(SimulatorOptions(port=0, chunk_delay=0.001, seed=2)) as sim:
        async with running(make_config(sim.url)) as svc:
            assert svc.proxy is not None
            async with connect(f"ws://127.0.0.1:{svc.proxy.port}") as ui:
                await ui.recv()
                await ui.send('{"type":"ping"}')
                await ui.recv()
            await svc.writer.flush()
            reader, writer = await asyncio.open_connection("127.0.0.1", svc.proxy.port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = await reader.read()
            writer.close()
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in head
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            by_label = {
                (s.labels["direction"], s.labels["role"]): s.value
                for s in families["recorder_frames"].samples
                if s.name == "recorder_frames_total"
            }
            rows = await query(
                svc,
                "select f.direction, c.role, count(*) as n from frames f "
                "join connections c on c.id = f.connection_id group by 1, 2",
            )
            assert by_label == {(r.direction, r.role): float(r.n) for r in rows}
            assert families["recorder_link_up"].samples[0].value == 1
            assert families["recorder_proxy_conversations"].samples[0].value == 1
            histogram = families["recorder_commit_seconds"]
            count = next(s for s in histogram.samples if s.name.endswith("_count")).value
            assert count == families["recorder_batches"].samples[0].value >= 1


async def test_a_reload_keeps_the_daemon_connection_and_the_log_is_json_on_stdout(
    tmp_path: Path, config_file: Callable[..., Path], recorders: list[Recorder]
) -> None:
    """SIGHUP with a valid file: the new log level applies, no reconnect; every log
    line on stdout is a JSON object with its event, level, time and context."""
    async with Simulator(SimulatorOptions(port=0)) as sim:
        url = f"ws://127.0.0.1:{sim.port}"
        config = config_file(daemon={"url": url}, log={"level": "info"})
        rec = Recorder(tmp_path, config)
        recorders.append(rec)
        await asyncio.to_thread(rec.ready)
        await sim.wait_connections(1, TIMEOUT)
        config_file(daemon={"url": url}, log={"level": "debug"})  # the same path, rewritten
        rec.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(rec.listener.until, "RELOADING")
        await asyncio.to_thread(rec.listener.until, "READY")
        assert await asyncio.to_thread(rec.stop) == 0
        assert sim.total_connections == 1, "the reload must not drop the daemon connection"
    assert rec.errors() == ""
    log = rec.log()
    assert all({"event", "level", "timestamp"} <= line.keys() for line in log)
    (connected,) = [e for e in log if e["event"] == "connected to daemon"]
    assert connected["url"] == url and connected["connection_id"] == 1
    (reloaded,) = [e for e in log if e["event"] == "configuration reloaded"]
    assert reloaded["log_level"] == "debug" and reloaded["config"] == str(config)
