"""`recorder export --format otlp`: a recorded session with tasks, tool calls, a
stream, a gap and a failure, sent by the real command to a real OTLP/HTTP receiver on
loopback (decoded with opentelemetry-proto), and written as OTLP JSON lines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from recorder.cli import cli
from recorder.otel.fold import TraceFold, TraceFrame
from recorder.otel.spans import shortened, span_id
from tests.otlp_receiver import (
    OTHER,
    SECRETS,
    SID,
    at,
    attributes,
    json_lines,
    receiver,
    write_session,
)

API_KEY = "k3y-n0t-t0-b3-s33n"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("otel") / "recorder.db"
    write_session(path)
    return path


def config(tmp_path: Path, **otel: str) -> Path:
    lines = ["[otel]", f'headers = {{ "x-api-key" = "{API_KEY}" }}']
    lines += [f"{k} = {v}" for k, v in otel.items()]
    path = tmp_path / "recorder.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "recorder", "export", "--format", "otlp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def export(db: Path, *args: str) -> Result:
    """`recorder export --format otlp` over ``db``, in this process."""
    return CliRunner().invoke(cli, ["export", "--format", "otlp", "--database", str(db), *args])


def by_trace(spans: list[tuple[dict[str, Any], Any]]) -> dict[bytes, list[Any]]:
    traces: dict[bytes, list[Any]] = defaultdict(list)
    for _, span in spans:
        traces[span.trace_id].append(span)
    return traces


def ms(ns: int) -> float:
    return (ns - at(0) * 1000) / 1e6


def test_a_session_becomes_one_trace_as_mapped(db: Path, tmp_path: Path) -> None:
    with receiver() as (url, got):
        done = run("--database", str(db), "--config", str(config(tmp_path)), "--endpoint", url)
    assert done.returncode == 0, done.stderr
    assert "exported 2 sessions (7 spans)" in done.stderr
    assert API_KEY not in done.stderr + done.stdout
    path, headers, _ = got.requests[0]
    assert path == "/v1/traces" and headers["x-api-key"] == API_KEY
    received = got.spans()
    resource = received[0][0]
    assert resource["service.name"] == "orchestrator-recorder"
    assert resource["service.instance.id"] == "default"
    traces = by_trace(received)
    assert len(traces) == 2  # one per session
    spans = next(t for t in traces.values() if len(t) > 1)
    (root,) = [s for s in spans if not s.parent_span_id]
    assert {s.parent_span_id for s in spans if s is not root} == {root.span_id}
    assert root.name == "invoke_agent vp_123"
    said = attributes(root.attributes)
    assert said["gen_ai.operation.name"] == "invoke_agent"
    assert said["gen_ai.conversation.id"] == said["session.id"] == SID
    assert said["gen_ai.agent.id"] == "vp_123"
    assert said["recorder.session.type"] == "claude-code"
    assert said["recorder.instance"] == "default"
    assert said["recorder.session.frames"] == 14
    assert said["gen_ai.usage.total_tokens"] == 1234  # the daemon's last word
    # Failed: ERROR with the session's own error text.
    assert root.status.code == 2 and root.status.message == "the model refused"
    # From the daemon's startedAt to its endedAt (both said near the recorder's times).
    assert (ms(root.start_time_unix_nano), ms(root.end_time_unix_nano)) == (150, 15900)
    (gap,) = root.events
    assert gap.name == "recorder.gap" and ms(gap.time_unix_nano) == 10_000
    assert attributes(gap.attributes) == {"recorder.gap.seconds": 5.0}

    named = defaultdict(list)
    for span in spans:
        named[span.name].append(span)
    (read,) = named["execute_tool read_file"]
    (bash,) = named["execute_tool bash"]
    assert (ms(read.start_time_unix_nano), ms(read.end_time_unix_nano)) == (700, 1200)
    assert (ms(bash.start_time_unix_nano), ms(bash.end_time_unix_nano)) == (1300, 2000)
    assert attributes(read.attributes)["gen_ai.tool.name"] == "read_file"
    assert attributes(read.attributes)["gen_ai.operation.name"] == "execute_tool"
    assert read.status.code == 0 and bash.status.code == 2
    (stream,) = named["stream"]
    assert (ms(stream.start_time_unix_nano), ms(stream.end_time_unix_nano)) == (400, 2100)
    assert attributes(stream.attributes) == {
        "recorder.stream.chunks": 2,
        "gen_ai.response.time_to_first_chunk": pytest.approx(0.1),
    }
    first, asked = sorted(named["task"], key=lambda s: s.start_time_unix_nano)
    assert (ms(asked.start_time_unix_nano), ms(asked.end_time_unix_nano)) == (300, 2200)
    assert asked.status.code == 2 and asked.status.message == "the tool failed"
    # The spawn's own task runs as long as the session.
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (
        root.start_time_unix_nano,
        root.end_time_unix_nano,
    )
    # Content is off: no tool input, result, task text or stream text anywhere.
    wire = b"".join(r.SerializeToString() for _, _, r in got.requests)
    for secret in SECRETS:
        assert secret.encode() not in wire, secret


def test_the_file_holds_the_ids_the_endpoint_got_and_again(db: Path, tmp_path: Path) -> None:
    with receiver() as (url, got):
        sent = export(db, "--endpoint", url)
    assert sent.exit_code == 0, sent.output
    endpoint = {
        (s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.start_time_unix_nano)
        for _, s in got.spans()
    }
    for attempt in ("a", "b"):
        out = tmp_path / f"{attempt}.jsonl"
        done = export(db, "--output", str(out))
        assert done.exit_code == 0, done.output
        written = {
            (
                s["traceId"],
                s["spanId"],
                s.get("parentSpanId", ""),
                s["name"],
                int(s["startTimeUnixNano"]),
            )
            for line in json_lines(out)
            for rs in line["resourceSpans"]
            for ss in rs["scopeSpans"]
            for s in ss["spans"]
        }
        assert written == endpoint


def test_content_goes_in_only_when_asked_and_cut(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "content.jsonl"
    conf = config(tmp_path, content="true", max_attribute_bytes="16")
    done = export(db, "-c", str(conf), "--session", SID, "-o", str(out))
    assert done.exit_code == 0, done.output
    text = out.read_text()
    spans = [
        s
        for rs in json_lines(out)[0]["resourceSpans"]
        for ss in rs["scopeSpans"]
        for s in ss["spans"]
    ]
    values = {a["key"]: a["value"].get("stringValue") for s in spans for a in s["attributes"]}
    assert values["gen_ai.tool.call.arguments"] == shortened('{"cmd": "rm -rf"}', 16)
    assert values["recorder.stream.text"] == shortened("hello secret text and more", 16)
    assert all(
        len(v.encode()) <= 16 for k, v in values.items() if v and k.startswith("gen_ai.tool.call")
    )
    assert OTHER not in text  # --session: that one only
    # --no-content overrides the configuration.
    done = export(db, "-c", str(conf), "--no-content", "-o", str(out))
    assert done.exit_code == 0 and "rm -rf" not in out.read_text()


def test_an_endpoint_that_is_down_is_one_line_and_exit_1(db: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens
    done = run(
        "--database",
        str(db),
        "--config",
        str(config(tmp_path)),
        "--endpoint",
        f"http://user:pw@127.0.0.1:{port}",
        # One retry after about a second (its warning names the cause), none after.
        env={"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3"},
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"Error: http://127.0.0.1:{port}/v1/traces did not take"
    )
    assert lines[0].endswith("connection refused")
    assert API_KEY not in done.stderr and "pw" not in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give --endpoint URL or --output FILE"),
        (["--endpoint", "http://127.0.0.1:1", "-o", "x"], "--endpoint and --output: give one"),
        (["--endpoint", "ftp://127.0.0.1:1"], "--endpoint: expected an OTLP/HTTP URL"),
        (["--session", SID, "--since", "1d", "-o", "x"], "--session and --since: give one"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(db: Path, args: list[str], says: str) -> None:
    done = export(db, *args)
    assert done.exit_code == 2 and says in done.output and len(done.output.splitlines()) == 1


def test_the_replay_forms_refuse_otlp_options_and_bad_headers_are_not_repeated(
    db: Path, tmp_path: Path
) -> None:
    done = CliRunner().invoke(cli, ["export", "--database", str(db), SID, "--since", "1d"])
    assert done.exit_code == 2 and "--since is for --format otlp" in done.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[otel]\nheaders = { "x-api-key" = "s3cr3t\\u00e9" }\n')
    done = CliRunner().invoke(cli, ["export", "--format", "otlp", "-c", str(bad), "-o", "x"])
    assert done.exit_code == 2 and "otel.headers.x-api-key" in done.output
    assert "s3cr3t" not in done.output


def test_the_cli_starts_without_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from recorder.cli import cli\n"
        "CliRunner().invoke(cli, ['export', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'google'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_stream_without_start_and_unanswered_calls_fold_with_stable_ids() -> None:
    def frame(i: int, kind: str, **data: Any) -> TraceFrame:
        return TraceFrame(i, 1, "in", 1000 + i, i * 1000, kind, None, {"data": data})

    fold = TraceFold()
    for f in (
        frame(1, "tool_call_start", toolName="t"),
        frame(2, "tool_call_start", toolName="t"),
        frame(3, "tool_call_result", toolName="t", status="completed"),
        frame(5, "stream_end"),
        frame(6, "tool_call_result", toolName="u", status="failed"),
    ):
        fold.add(f)
    folded = fold.done()
    # Results pair with starts in order, per connection and name.
    assert [(t.start and t.start.id, t.end and t.end.id) for t in folded.tools] == [
        (1, 3),
        (2, None),
        (None, 6),
    ]
    (stream,) = folded.streams
    assert (stream.after_id, stream.start, stream.before_id) == (0, None, 5)
    assert span_id("a", "s", "tool", 1) == span_id("a", "s", "tool", 1)
    assert span_id("a", "s", "tool", 1) != span_id("b", "s", "tool", 1)
    assert json.dumps(shortened("é" * 10, 5)) == json.dumps("é…")
