"""The service's live OpenTelemetry export: sessions recorded through the proxy from
the simulated daemon, sent by the running service to a real OTLP/HTTP receiver on
loopback (decoding ExportTraceServiceRequest), each once: after export_after, across
an endpoint that is down then back, and across a restart; with the backfill's ids.

Real parts: the simulated daemon on port 0, the real service in this loop, its writer
processes, SQLite under tmp_path, the OpenTelemetry SDK's exporter."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import ClientConnection, connect

from recorder.cli import cli
from recorder.config import Config, load_config
from recorder.db.otel_exports import Exported, mark_exported, start_endpoint
from recorder.db.recordings import Recordings
from recorder.service.exporting import Exporting
from recorder.simulator.daemon import Simulator
from recorder.simulator.options import SimulatorOptions
from tests.cleanup_scripts import open_db, record, status
from tests.conftest import TIMEOUT, RunningService, proxy_recording_config, running
from tests.helpers import query, wait_until
from tests.otlp_receiver import SECOND, Received, at, attributes, json_lines, receiver
from tests.postmortem_recording import spawn_request, status_of
from tests.proxy_peers import proxy_url

OPTIONS = SimulatorOptions(port=0, chunk_delay=0.001, seed=3, fail_rate=0.0)
API_KEY = "l1ve-k3y-n0t-t0-b3-s33n"


def otel_config(tmp: Path, daemon: str, endpoint: str) -> Config:
    """The service recording ``daemon`` into tmp/r.db, exporting to ``endpoint``
    with an API key in a header."""
    proxy_recording_config(tmp, daemon, tmp / "r.db", reconnect={"base": 0.1, "cap": 0.2})
    path = tmp / "config.toml"
    otel = f'[otel]\nendpoint = "{endpoint}"\nexport_after = "0.2s"\n'
    path.write_text(f'{path.read_text()}\n{otel}headers = {{ "x-api-key" = "{API_KEY}" }}\n')
    return load_config(path, env={})


async def spawned(ui: ClientConnection, description: str) -> str:
    """A session spawned through the proxy, once it has completed: its id."""
    await ui.send(json.dumps(spawn_request("vp_live", description)))
    return await status_of(ui, None, "completed")


class Traces:
    """What the receiver got, by session: each session's spans, and how many times
    its root span came."""

    def __init__(self, got: Received) -> None:
        self.got = got
        self.spans: list[Any] = []

    def roots(self) -> Counter[str]:
        return Counter(
            str(attributes(s.attributes)["session.id"]) for s in self.spans if not s.parent_span_id
        )

    async def until(self, *sessions: str) -> None:
        """Read requests until every one of ``sessions`` has come."""
        async with asyncio.timeout(TIMEOUT):
            while not set(sessions) <= set(self.roots()):
                self.spans += await asyncio.to_thread(self.got.next_spans, TIMEOUT)

    def of(self, session: str) -> list[Any]:
        (root,) = [
            s
            for s in self.spans
            if not s.parent_span_id and attributes(s.attributes)["session.id"] == session
        ]
        return [s for s in self.spans if s.trace_id == root.trace_id]


def exporting(svc: RunningService) -> Exporting:
    assert isinstance(svc.exporting, Exporting)
    return svc.exporting


async def quiet(svc: RunningService, traces: Traces) -> None:
    """Three more rounds of the export, after which nothing more has come."""
    export = exporting(svc)
    await asyncio.wait_for(export.rounds_after(export.rounds + 3), TIMEOUT)
    assert traces.got.arrived.empty()


async def exported(svc: RunningService, *sessions: str) -> None:
    """Until the cursor holds ``sessions``."""

    async def marked() -> bool:
        rows = await query(svc, "select session_id from otel_exports")
        return set(sessions) <= {r.session_id for r in rows}

    await wait_until(svc, marked, timeout=TIMEOUT)


async def test_a_completed_session_is_exported_once_with_the_backfills_ids(
    tmp_path: Path,
) -> None:
    with receiver() as (url, got):
        traces = Traces(got)
        async with Simulator(OPTIONS) as sim:
            config = otel_config(tmp_path, sim.url, url)
            async with running(config) as svc, connect(proxy_url(svc)) as ui:
                await ui.recv()  # the hello
                sid = await spawned(ui, "Fine work")
                await traces.until(sid)
                await exported(svc, sid)
                await quiet(svc, traces)
                rows = await query(svc, "select session_id, spans, trace_id from otel_exports")
    assert traces.roots() == {sid: 1}
    live = traces.of(sid)
    (root,) = [s for s in live if not s.parent_span_id]
    assert root.name == "invoke_agent vp_live"
    assert [(r.session_id, r.spans, r.trace_id) for r in rows] == [
        (sid, len(live), root.trace_id.hex())
    ]
    # The backfill of the same session: the same trace, the same span ids.
    out = tmp_path / "traces.jsonl"
    args = ["export", "--format", "otlp", "--database", str(tmp_path / "r.db")]
    done = CliRunner().invoke(cli, [*args, "--session", sid, "--output", str(out)])
    assert done.exit_code == 0, done.output
    filed = [
        (span["traceId"], span["spanId"])
        for request in json_lines(out)
        for rs in request["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]
    assert sorted(filed) == sorted((s.trace_id.hex(), s.span_id.hex()) for s in live)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_endpoint_down_then_back_receives_every_session_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # One send gives up within half a second (the OTLP exporter's own variable).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")
    port = free_port()  # nothing listens: connections are refused
    got = Received()
    traces = Traces(got)
    async with Simulator(OPTIONS) as sim:
        config = otel_config(tmp_path, sim.url, f"http://127.0.0.1:{port}")
        async with running(config) as svc, connect(proxy_url(svc)) as ui:
            await ui.recv()
            first = await spawned(ui, "First work")
            second = await spawned(ui, "Second work")
            export = exporting(svc)
            async with asyncio.timeout(TIMEOUT):
                while not export.failures:
                    await export.rounds_after(export.rounds + 1)
            assert not await query(svc, "select 1 from otel_exports")
            with receiver(port, got):
                await traces.until(first, second)
                await exported(svc, first, second)
                await quiet(svc, traces)
            failures = export.failures
    assert traces.roots() == {first: 1, second: 1}
    assert failures == 0  # the export went on once the endpoint was back
    assert {h["x-api-key"] for _, h, _ in got.requests} == {API_KEY}
    said = capfd.readouterr()
    logged = said.out + said.err
    assert "sessions not exported; trying again later" in logged
    assert "trace export resumed" in logged
    assert API_KEY not in logged


async def test_a_restart_in_the_middle_sends_nothing_twice(tmp_path: Path) -> None:
    with receiver() as (url, got):
        traces = Traces(got)
        async with Simulator(OPTIONS) as sim:
            config = otel_config(tmp_path, sim.url, url)
            async with running(config) as svc, connect(proxy_url(svc)) as ui:
                await ui.recv()
                before = await spawned(ui, "Before the restart")
                await traces.until(before)
                await exported(svc, before)
            async with running(config) as again, connect(proxy_url(again)) as ui:
                await ui.recv()
                after = await spawned(ui, "After the restart")
                await traces.until(after)
                await exported(again, before, after)
                await quiet(again, traces)
                sessions = await query(again, "select id from sessions")
    assert traces.roots() == {before: 1, after: 1}
    assert {r.id for r in sessions} == {before, after}


@pytest.fixture
def url(either_url: str) -> str:
    return either_url


async def test_the_due_sessions_come_in_the_order_they_became_due_from_the_cursor(
    url: str,
) -> None:
    """The read behind the live export, on both databases: finished sessions by their
    final status, the others by their last sighting, each once export_after has passed;
    not those sent, those before the endpoint was started, or another recorder's; and a
    session committed late, behind the cursor, still found."""
    await record(
        url,
        [
            (at(0.5), "in", status("early", "completed")),  # before the export began
            (at(1), "in", status("done", "running")),
            (at(1.5), "in", status("idle", "running")),
            (at(2), "in", status("done", "completed")),
            (at(3), "in", status("idle", "running")),
            (at(8), "in", status("done", "completed")),  # seen again: still due at 2 s
            (at(9.5), "in", status("busy", "running")),  # seen within export_after
            (at(9.6), "in", status("recent", "completed")),
        ],
    )
    await record(url, [(at(2.2), "in", status("theirs", "completed"))], instance="other")
    key, now, after = "k", at(10), SECOND

    def read() -> tuple[list[str], int | None]:
        with Recordings.open(url) as r:
            found = r.due_exports(key, now, after, 20, "default")
            return [s.id for s in found], r.export_start(key)

    async def due() -> list[str]:
        # In a thread, as the service reads (PostgreSQL's reader runs its own loop).
        return (await asyncio.to_thread(read))[0]

    assert await due() == []  # the endpoint is not started
    db, _, _ = await open_db(url)
    try:
        await db.run(start_endpoint, key, at(1))
        assert await due() == ["done", "idle"]
        await db.run(start_endpoint, key, at(5))  # started before: kept
        await db.run(mark_exported, key, [Exported("done", at(2), 3, "ab")], at(10))
        assert await due() == ["idle"]
        await db.run(mark_exported, key, [Exported("idle", at(3), 1, "cd")], at(10))
        await db.run(mark_exported, key, [Exported("idle", at(3), 1, "cd")], at(11))  # again
        assert await due() == []
    finally:
        await db.shutdown()
    # Committed after the cursor passed it (a writer's queue behind): found behind it.
    await record(url, [(at(2.5), "in", status("late", "failed"))])
    assert await due() == ["late"]
    # The next look starts 120 s before the newest due time sent, not before the start.
    assert (await asyncio.to_thread(read))[1] == at(1)


async def test_sighup_starts_the_export_in_a_service_that_had_none(tmp_path: Path) -> None:
    with receiver() as (url, got):
        traces = Traces(got)
        async with Simulator(OPTIONS) as sim:
            config = proxy_recording_config(tmp_path, sim.url, tmp_path / "r.db")
            async with running(config) as svc, connect(proxy_url(svc)) as ui:
                assert svc.exporting is None
                await ui.recv()
                otel_config(tmp_path, sim.url, url)  # the same file, with [otel] now
                await svc.reload()
                sid = await spawned(ui, "Fine work")
                await traces.until(sid)
                await exported(svc, sid)
    assert traces.roots() == {sid: 1}
