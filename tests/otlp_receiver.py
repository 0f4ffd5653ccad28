"""What the OTLP export's tests build on: a real OTLP/HTTP receiver on loopback that
decodes each ExportTraceServiceRequest with the protocol's own messages, and a
recorded session with tasks, tool calls, a stream, a gap and a failure, written by
the writer's own code at chosen times."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from recorder.times import iso_from_ms
from tests.report_recordings import Link, message, write_timed

SECOND = 1_000_000
T0 = 1_790_812_800_000_000  # 2026-10-01T00:00:00Z
SID = "session_otel_1"
OTHER = "session_otel_2"
TASK2 = "Task 2: a secret prompt"
SECRETS = ("/secret/path", "secret content", "rm -rf", "a secret prompt", "hello secret text")


@dataclass
class Received:
    """What the receiver was sent: each request's path, headers and decoded body."""

    requests: list[tuple[str, dict[str, str], ExportTraceServiceRequest]] = field(
        default_factory=list
    )
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Each request's spans as it arrives: tests wait on it with a timeout.
    arrived: queue.Queue[list[Any]] = field(default_factory=queue.Queue)

    def next_spans(self, timeout: float) -> list[Any]:
        """The spans of the next request (queue.Empty after ``timeout`` seconds)."""
        return self.arrived.get(timeout=timeout)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource's attributes."""
        out = []
        with self.lock:
            for _, _, request in self.requests:
                for rs in request.resource_spans:
                    resource = attributes(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        out += [(resource, span) for span in ss.spans]
        return out


def attributes(kvs: Any) -> dict[str, Any]:
    """OTLP key-values as a dict of plain values."""
    out: dict[str, Any] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@contextmanager
def receiver(port: int = 0, got: Received | None = None) -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP receiver on 127.0.0.1 (``port``: any free one): its base URL, and
    what it received (``got``: added to what a receiver before it received)."""
    into = got if got is not None else Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with into.lock:
                into.requests.append((self.path, dict(self.headers.items()), request))
            spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            into.arrived.put(spans)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", into
    finally:
        server.shutdown()
        server.server_close()


def at(seconds: float) -> int:
    return T0 + int(seconds * SECOND)


def _session(state: str, tokens: int, **more: Any) -> bytes:
    session = {
        "id": SID,
        "orchestratorId": "vp_123",
        "type": "claude-code",
        "status": state,
        "task": {"id": "task_1", "description": "Implement feature X"},
        "startedAt": iso_from_ms(at(0.15) // 1000),
        "metrics": {"tokensUsed": tokens, "duration": 3},
        **more,
    }
    return message("session_status_update", session=session)


def _data(kind: str, sid: str = SID, **data: Any) -> bytes:
    return message(kind, data={"sessionId": sid, **data})


def write_session(db: Path) -> None:
    """Two link connections with a gap between them (10 s to 15 s): the session runs,
    a task asked for streams two tool calls (one failing) and fails, the recording
    stops, and when it is back the session has failed. Another session beside it."""
    first = [
        (at(0.2), "in", _session("running", 10)),
        (at(0.3), "out", message("execute_task", payload={"sessionId": SID, "task": TASK2})),
        (at(0.35), "in", message("task_executing", sessionId=SID, taskId=TASK2)),
        (at(0.4), "in", _data("stream_start")),
        (at(0.5), "in", _data("stream_chunk", chunk="hello secret text")),
        (at(0.6), "in", _data("stream_chunk", chunk=" and more")),
        (
            at(0.7),
            "in",
            _data("tool_call_start", toolName="read_file", toolInput={"path": "/secret/path"}),
        ),
        (
            at(1.2),
            "in",
            _data(
                "tool_call_result",
                toolName="read_file",
                status="completed",
                result={"content": "secret content"},
            ),
        ),
        (at(1.3), "in", _data("tool_call_start", toolName="bash", toolInput={"cmd": "rm -rf"})),
        (
            at(2.0),
            "in",
            _data(
                "tool_call_result",
                toolName="bash",
                status="failed",
                result={"error": "permission denied"},
            ),
        ),
        (at(2.1), "in", _data("stream_end")),
        (
            at(2.2),
            "in",
            message("task_failed", sessionId=SID, taskId=TASK2, error="the tool failed"),
        ),
        (at(3.0), "in", _data("stream_chunk", OTHER, chunk="x")),
    ]
    ended = iso_from_ms(at(15.9) // 1000)
    second = [
        (at(15.5), "in", message("error", sessionId=SID, error="the model refused")),
        (at(16.0), "in", _session("failed", 1234, endedAt=ended)),
    ]
    write_timed(db, [Link(T0, at(10), first), Link(at(15), None, second)])


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
