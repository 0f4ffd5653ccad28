"""Sessions' traces sent over OTLP/HTTP, or written as OTLP JSON lines.

Both go through the SDK's own pieces: each span becomes an SDK ``ReadableSpan`` with
its recorded times and derived ids, the OTLP encoder makes the
``ExportTraceServiceRequest``, and the official ``OTLPSpanExporter`` posts it (its
retries with backoff on 429/502/503/504 and connection errors, Retry-After, TLS and
compression settings from the standard environment). The SDK's docs say a
``ReadableSpan`` is made by its tracer; a recorded span has no live tracer to come
from, and building it by hand keeps the encoder and the exporter the SDK's own (what
``--output`` writes is what an endpoint receives), where building the protobuf
messages directly would write a second encoder and a second HTTP client.

The OpenTelemetry modules are imported here, and this module only where spans are
sent: the CLI's startup never pays for them.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.service_attributes import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
)
from opentelemetry.semconv.schemas import Schemas
from opentelemetry.trace.status import Status, StatusCode

from recorder import __version__
from recorder.otel.settings import shown_endpoint, traces_url
from recorder.otel.spans import SERVICE_NAME as OUR_NAME
from recorder.otel.spans import SessionTrace, Span

# Spans per request: an OTLP receiver takes a few MB per request (the Collector's
# default limit is 20 MiB... for gRPC 4 MiB); a span with content is up to a few KB.
BATCH_SPANS = 2000
SCHEMA_URL = Schemas.V1_44_0.value
# The exporter's own log: its reasons are caught here and said in one line.
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
)


class ExportFailed(Exception):
    """An endpoint did not take the spans: one line, without headers or credentials.
    ``permanent``: it refused them for good (an HTTP 4xx the OTLP exporter does not
    retry, such as 400): sending the same spans again would be refused again."""

    def __init__(self, said: str, *, permanent: bool = False) -> None:
        super().__init__(said)
        self.permanent = permanent


# The status of a refusal, as the OTLP exporter logs it ("... batch code: 400, ...").
_CODE = re.compile(r"\bcode: (\d{3})\b")
# What it retries itself, and a later request may see taken (OTLP/HTTP's retryable).
_RETRYABLE = {408, 429}


def refused_for_good(said: Iterable[str]) -> bool:
    """Whether the exporter's lines say the endpoint refused the request for good."""
    for line in said:
        found = _CODE.search(line)
        if found is not None:
            code = int(found.group(1))
            return 400 <= code < 500 and code not in _RETRYABLE
    return False


def readable_spans(trace: SessionTrace) -> list[ReadableSpan]:
    """The session's spans as the SDK's spans, with their fixed ids and times."""
    resource = Resource(
        {
            SERVICE_NAME: OUR_NAME,
            SERVICE_INSTANCE_ID: trace.instance,
            SERVICE_VERSION: __version__,
        },
        SCHEMA_URL,
    )
    scope = InstrumentationScope(OUR_NAME, __version__, SCHEMA_URL)
    tid = int.from_bytes(trace.trace_id, "big")
    flags = trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED)

    def context(sid: bytes) -> trace_api.SpanContext:
        return trace_api.SpanContext(tid, int.from_bytes(sid, "big"), False, flags)

    def readable(span: Span) -> ReadableSpan:
        status = Status(StatusCode.UNSET)
        if span.error is not None:
            status = Status(StatusCode.ERROR, span.error)
        return ReadableSpan(
            span.name,
            context(span.span_id),
            context(span.parent_id) if span.parent_id is not None else None,
            resource,
            dict(span.attributes),
            [Event(e.name, dict(e.attributes), e.at_ns) for e in span.events],
            (),
            trace_api.SpanKind.INTERNAL,
            None,
            status,
            span.start_ns,
            span.end_ns,
            scope,
        )

    return [readable(s) for s in trace.spans]


def batches(
    traces: Iterable[SessionTrace], size: int = BATCH_SPANS
) -> Iterator[list[ReadableSpan]]:
    """The traces' spans in requests of about ``size`` spans (a long session's trace
    is split across requests: its ids tie it together)."""
    held: list[ReadableSpan] = []
    for trace in traces:
        held += readable_spans(trace)
        while len(held) >= size:
            yield held[:size]
            held = held[size:]
    if held:
        yield held


def request_json(spans: Sequence[ReadableSpan]) -> str:
    """One ExportTraceServiceRequest in OTLP/JSON on one line, as the Collector's file
    exporter writes it: ids in hex, enums as numbers, names in lowerCamelCase."""
    from google.protobuf.json_format import MessageToDict

    document = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    return json.dumps(_hex_ids(document), separators=(",", ":"), ensure_ascii=False)


def _hex_ids(value: Any) -> Any:
    """The protobuf JSON mapping writes bytes in base64; OTLP/JSON wants ids in hex."""
    if isinstance(value, dict):
        return {
            k: base64.b64decode(v).hex()
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
            else _hex_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_hex_ids(v) for v in value]
    return value


def write_lines(traces: Iterable[SessionTrace], stream: IO[str]) -> int:
    """The traces as OTLP JSON lines on ``stream``; the number of spans written."""
    written = 0
    for spans in batches(traces):
        stream.write(request_json(spans) + "\n")
        written += len(spans)
    return written


@dataclass
class Endpoint:
    """An OTLP/HTTP endpoint (its base URL, /v1/traces appended unless there) and the
    headers it wants. ``timeout``: seconds for one request and its retries (None: the
    standard OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, else 10)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float | None = None

    def send(self, traces: Iterable[SessionTrace]) -> int:
        """Post the traces' spans; the number sent. ExportFailed at the first request
        the endpoint did not take (after the exporter's retries)."""
        exporter = OTLPSpanExporter(
            endpoint=traces_url(self.url), headers=dict(self.headers), timeout=self.timeout
        )
        sent = 0
        try:
            for spans in batches(traces):
                with _reasons() as said:
                    result = exporter.export(spans)
                if result is not SpanExportResult.SUCCESS:
                    reason = _unsaid(said[0], self.headers) if said else "no reason given"
                    where = shown_endpoint(traces_url(self.url))
                    raise ExportFailed(
                        f"{where} did not take the spans: {reason}",
                        permanent=refused_for_good(said),
                    )
                sent += len(spans)
        finally:
            exporter.shutdown()  # type: ignore[no-untyped-call]
        return sent


def _unsaid(reason: str, headers: Mapping[str, str]) -> str:
    """``reason`` without the headers' values: requests quotes a value it refuses
    (``Invalid leading whitespace ... in header value: ' KEY'``), and they are secrets."""
    for secret in sorted({v.strip() for v in headers.values()}, key=len, reverse=True):
        if secret:
            reason = reason.replace(secret, "***")
    return reason


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^\"')\]]+)")


class _Reasons(logging.Handler):
    """The exporter's log records while it sends, kept instead of printed: the
    first error becomes ExportFailed's one line."""

    def __init__(self, said: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.said = said

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        # A connection's failure is deep in urllib3's text: its errno's words say it.
        cause = _ERRNO.search(text)
        if cause is not None:
            self.said.append(cause.group(1).strip().lower())
        elif "due to timeout" in text:
            self.said.append("no success within the timeout, retries included")
        elif record.levelno >= logging.ERROR:
            self.said.append(text[:300])


@contextmanager
def _reasons() -> Iterator[list[str]]:
    """The exporter's errors while it sends, as lines (not printed)."""
    said: list[str] = []
    handler = _Reasons(said)
    saved = []
    for name in _EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield said
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
