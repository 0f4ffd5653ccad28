"""The ``[otel]`` section: where traces go and what they may carry. Pure: no
OpenTelemetry import, since every configuration load reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

# The OTLP/HTTP path of traces under an endpoint's base URL (the OTLP exporter
# specification: OTEL_EXPORTER_OTLP_ENDPOINT is a base, the signal's path appended).
TRACES_PATH = "/v1/traces"
DEFAULT_MAX_ATTRIBUTE_BYTES = 4096


@dataclass(frozen=True)
class OtelConfig:
    # OTLP/HTTP base URL ("http://127.0.0.1:4318"); empty: no endpoint.
    endpoint: str = field(default="", repr=False)
    # Sent with every request (an API key, most often): secrets, never logged or shown.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The live export's delay after a session's final status, or its idleness.
    export_after: str = "30s"
    # Tool arguments and results, task descriptions and stream text go into spans only
    # when true, each cut to max_attribute_bytes.
    content: bool = False
    max_attribute_bytes: int = DEFAULT_MAX_ATTRIBUTE_BYTES

    @property
    def export_after_s(self) -> float:
        from recorder.protocol.policy import parse_duration

        return parse_duration(self.export_after)

    @property
    def traces_url(self) -> str:
        """Where spans are posted: the endpoint with /v1/traces (unless it has it)."""
        return traces_url(self.endpoint)


def traces_url(endpoint: str) -> str:
    """``endpoint`` (a base URL) with the traces path appended, as OTLP exporters do
    with OTEL_EXPORTER_OTLP_ENDPOINT; a URL that already ends with it is kept."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    if not path.endswith(TRACES_PATH):
        path += TRACES_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def shown_endpoint(endpoint: str) -> str:
    """An endpoint as messages show it: without user and password, query or fragment
    (a token may hide in any of them)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
