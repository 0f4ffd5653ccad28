"""Attacks on the OpenTelemetry export: an endpoint's header value that the HTTP
client refuses (it must not be quoted back in an error line), and an endpoint that
refuses one session for good (HTTP 400: the OTLP specification says not to retry it).

Real parts: the SDK's exporter posting to an HTTP server on loopback, the simulated
daemon, the real service in this loop with its writer processes, SQLite under tmp_path."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from websockets.asyncio.client import connect

from recorder.config import load_config
from recorder.config.sections import ConfigError
from recorder.db.recordings import Recordings
from recorder.otel.build import Shape
from recorder.otel.send import Endpoint, ExportFailed
from recorder.otel.trace import read_trace
from recorder.service.exporting import Exporting
from recorder.simulator.daemon import Simulator
from recorder.simulator.options import SimulatorOptions
from tests.conftest import TIMEOUT, proxy_recording_config, running
from tests.otlp_receiver import SID, attributes, receiver, write_session
from tests.postmortem_recording import spawn_request, status_of
from tests.proxy_peers import proxy_url

SECRET = "k3y-that-must-n0t-be-s33n"
OPTIONS = SimulatorOptions(port=0, chunk_delay=0.001, seed=5, fail_rate=0.0)


def test_a_header_value_the_http_client_refuses_is_never_repeated(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    write_session(db)
    with Recordings.open(f"sqlite:///{db}") as recordings:
        trace = read_trace(recordings, SID, Shape(False, 4096))
    with receiver() as (url, _):
        # requests refuses a value that starts with a space, quoting it in its error.
        with pytest.raises(ExportFailed) as failed:
            Endpoint(url, {"x-api-key": f" {SECRET}"}, 2).send([trace])
    assert "did not take the spans" in str(failed.value)
    assert SECRET not in str(failed.value)
    # And the configuration does not take such a value, nor repeat it.
    config = tmp_path / "config.toml"
    config.write_text(f'[otel]\nendpoint = "{url}"\nheaders = {{ "x-api-key" = " {SECRET}" }}\n')
    with pytest.raises(ConfigError) as refused:
        load_config(config, env={})
    assert "otel.headers.x-api-key" in str(refused.value)
    assert SECRET not in str(refused.value)


class Refusing:
    """An OTLP/HTTP endpoint that refuses for good (400) the sessions of the first
    request it gets, and every request that holds one of them; takes the others."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.taken: set[str] = set()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def answer(self, body: bytes) -> int:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        sessions = {
            str(attributes(s.attributes)["session.id"])
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
            if not s.parent_span_id
        }
        with self.changed:
            if not self.refused:
                self.refused = set(sessions)
            code = 400 if sessions & self.refused else 200
            if code == 200:
                self.taken |= sessions
            self.changed.notify_all()
            return code


@contextmanager
def refusing() -> Iterator[tuple[str, Refusing]]:
    endpoint = Refusing()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            code = endpoint.answer(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", endpoint
    finally:
        server.shutdown()
        server.server_close()


async def test_a_session_the_endpoint_refuses_for_good_holds_back_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short backoff, so that a few rounds take a fraction of a second.
    monkeypatch.setattr("recorder.service.exporting.BASE", 0.02)
    monkeypatch.setattr("recorder.service.exporting.CAP", 0.05)
    with refusing() as (url, endpoint):
        async with Simulator(OPTIONS) as sim:
            proxy_recording_config(tmp_path, sim.url, tmp_path / "r.db")
            path = tmp_path / "config.toml"
            path.write_text(
                f'{path.read_text()}\n[otel]\nendpoint = "{url}"\nexport_after = "0.1s"\n'
            )
            config = load_config(path, env={})
            async with running(config) as svc, connect(proxy_url(svc)) as ui:
                await ui.recv()
                await ui.send(json.dumps(spawn_request("vp_a", "First")))
                await status_of(ui, None, "completed")
                export = svc.exporting
                assert isinstance(export, Exporting)
                async with asyncio.timeout(TIMEOUT):
                    while not endpoint.refused:
                        await export.rounds_after(export.rounds + 1)
                await ui.send(json.dumps(spawn_request("vp_b", "Second")))
                second = await status_of(ui, None, "completed")
                # Ten rounds after the second is due: it has been sent, and taken.
                async with asyncio.timeout(TIMEOUT):
                    await export.rounds_after(export.rounds + 10)
    assert second not in endpoint.refused
    assert second in endpoint.taken
