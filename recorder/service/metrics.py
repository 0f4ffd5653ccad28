"""``GET /metrics``: the service's counters in the Prometheus text format.

Written directly (the format is a few lines of text per metric): the service keeps
no registry and imports nothing for it. Counters that live in the writer processes
(frames and bytes committed, per direction and role; commit latency) come up with
the writer's answers (:class:`~recorder.pipeline.writer.WriterMetrics`).
Served on the proxy's port, or on ``[metrics] listen`` when the proxy is off; on an
address other machines reach, only to a request with a token
(:func:`~recorder.capture.admission.metrics_refusal`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from recorder.capture.admission import METRICS_REFUSED, metrics_refusal, metrics_token_wanted
from recorder.pipeline.writer_metrics import COMMIT_BUCKETS, WriterMetrics
from recorder.service.snapshot import LinkState, ProxyState, Snapshot

log = structlog.get_logger("recorder.service")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LINK_STATES = ("connecting", "connected", "waiting")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _family(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    return lines + [f"{name}{labels} {_number(value)}" for labels, value in samples]


def _labels(**pairs: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in pairs.items())
    return "{" + inner + "}" if inner else ""


def render(now: Snapshot) -> str:
    """The service's counters, in the Prometheus text format."""
    lines = [*_committed(now.writer), *_queue(now), *_link(now.link), *_proxy(now.proxy)]
    if now.database_bytes is not None:
        lines += _family(
            "recorder_database_bytes", "gauge", "Size of the database.", [("", now.database_bytes)]
        )
    lines += _family(
        "recorder_writer_restarts_total", "counter", "Writer processes restarted.", [("", 0)]
    )
    if now.writer.last_frame_us is not None:
        lines += _family(
            "recorder_last_frame_timestamp_seconds",
            "gauge",
            "When the newest committed frame was received (Unix time).",
            [("", now.writer.last_frame_us / 1e6)],
        )
    return "\n".join(lines) + "\n"


def _committed(m: WriterMetrics) -> list[str]:
    """Frames and bytes committed, by direction and role; batches; commit latency."""
    by = sorted(m.frames.items())
    lines = _family(
        "recorder_frames_total",
        "counter",
        "Frames committed to the database.",
        ((_labels(direction=d, role=r), n) for (d, r), (n, _) in by),
    )
    lines += _family(
        "recorder_frame_bytes_total",
        "counter",
        "Bytes of frames committed to the database.",
        ((_labels(direction=d, role=r), b) for (d, r), (_, b) in by),
    )
    lines += _family("recorder_batches_total", "counter", "Batches committed.", [("", m.batches)])
    buckets: list[tuple[str, float]] = [
        (f'_bucket{{le="{bound:g}"}}', count)
        for bound, count in zip(COMMIT_BUCKETS, m.commit_buckets, strict=True)
    ]
    buckets += [
        ('_bucket{le="+Inf"}', m.batches),
        ("_sum", m.commit_seconds),
        ("_count", m.batches),
    ]
    return (
        lines
        + [
            "# HELP recorder_commit_seconds From shipping a batch to its commit.",
            "# TYPE recorder_commit_seconds histogram",
        ]
        + [f"recorder_commit_seconds{suffix} {_number(value)}" for suffix, value in buckets]
    )


def _queue(now: Snapshot) -> list[str]:
    lines = _family(
        "recorder_queue_frames", "gauge", "Frames waiting for the writer.", [("", now.queued)]
    )
    lines += _family(
        "recorder_queue_bytes", "gauge", "Bytes waiting for the writer.", [("", now.queue_bytes)]
    )
    return lines + _family(
        "recorder_backpressure_waits_total",
        "counter",
        "Times a producer waited for room in the queue (its socket not read meanwhile).",
        [("", now.backpressure_waits)],
    )


def _link(link: LinkState) -> list[str]:
    lines = _family(
        "recorder_link_state",
        "gauge",
        "The daemon link's state (1 for the current one).",
        ((_labels(state=s), int(link.state == s)) for s in LINK_STATES),
    )
    lines += _family(
        "recorder_link_up",
        "gauge",
        "1 while the link is connected.",
        [("", int(link.state == "connected"))],
    )
    return lines + _family(
        "recorder_link_reconnects_total",
        "counter",
        "Connection attempts that failed or connections that ended, by reason.",
        ((_labels(reason=r), n) for r, n in sorted(link.reconnects.items())),
    )


def _proxy(proxy: ProxyState | None) -> list[str]:
    lines = _family(
        "recorder_proxy_clients",
        "gauge",
        "UIs connected through the proxy now.",
        [("", proxy.clients if proxy is not None else 0)],
    )
    return lines + _family(
        "recorder_proxy_conversations_total",
        "counter",
        "UI conversations relayed since start.",
        [("", proxy.conversations if proxy is not None else 0)],
    )


def authorization(request: bytes) -> str | None:
    """The first ``Authorization`` header's value in a raw HTTP request head, if any."""
    for line in request.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"authorization":
            return value.strip().decode("latin-1")
    return None


def answer(
    snapshot: Callable[[], Snapshot], token: str | None, host: str, request: bytes
) -> tuple[str, bytes, str]:
    """The status line's text, the body and any extra header lines for one request."""
    target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
    if not (request.startswith(b"GET ") and target.split(b"?")[0] == b"/metrics"):
        return "404 Not Found", b"not found\n", ""
    refused = metrics_refusal(
        authorization(request), (token,), wanted=metrics_token_wanted(host, token)
    )
    if refused == 401:
        body = METRICS_REFUSED[401].encode()
        return "401 Unauthorized", body, 'WWW-Authenticate: Bearer realm="recorder"\r\n'
    if refused == 403:
        return "403 Forbidden", METRICS_REFUSED[403].encode(), ""
    return "200 OK", render(snapshot()).encode(), ""


# Scrapers ask one at a time; connections past this many are closed at once, so that
# clients which send nothing cannot take the descriptors the link dials with.
MAX_CONNECTIONS = 16


async def serve_metrics(
    snapshot: Callable[[], Snapshot], token: str | None, host: str, port: int
) -> asyncio.Server:
    """A small HTTP server answering ``GET /metrics`` (when the proxy is off): the
    snapshot the service hands it, behind ``token`` (``[metrics] token``)."""
    open_now = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        if open_now >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        open_now += 1
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status, body, extra = answer(snapshot, token, host, request)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n{extra}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            open_now -= 1
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics listening", listen=f"{host}:{server.sockets[0].getsockname()[1]}")
    return server
