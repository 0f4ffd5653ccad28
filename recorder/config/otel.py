"""The ``[otel]`` table of the configuration, checked key by key, with the OTLP
exporter's standard environment variables as fallbacks for the endpoint and headers.

Every problem is one line naming the key; the loader prefixes the file and exits 2.
Header values are secrets (API keys): no message repeats them, and neither does a
message repeat an endpoint's user, password or query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from recorder.config.checks import split_url
from recorder.config.sections import ConfigError
from recorder.otel.settings import DEFAULT_MAX_ATTRIBUTE_BYTES, OtelConfig, shown_endpoint
from recorder.protocol.policy import PolicyError, parse_duration

ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
KEYS = ("endpoint", "headers", "export_after", "content", "max_attribute_bytes")
# An HTTP header's name: a token (RFC 9110).
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# An attribute shorter than this could not hold a useful start of anything.
MIN_ATTRIBUTE_BYTES = 16
MAX_ATTRIBUTE_BYTES = 16 * 1024 * 1024


def parse_otel(raw: Mapping[str, Any], env: Mapping[str, str]) -> OtelConfig:
    """``raw`` is the TOML table ({} when there is none); raises ConfigError naming the
    key (without the file)."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key 'otel.{unknown[0]}'")
    endpoint = raw.get("endpoint", "")
    if not isinstance(endpoint, str):
        raise ConfigError("otel.endpoint: expected a URL (a string)")
    where = "otel.endpoint"
    if not endpoint.strip() and env.get(ENV_ENDPOINT, "").strip():
        endpoint, where = env[ENV_ENDPOINT], ENV_ENDPOINT
    endpoint = endpoint.strip()
    if endpoint:
        check_endpoint(where, endpoint)
    headers = _headers(raw, env)
    after = raw.get("export_after", "30s")
    try:
        parse_duration(after)
    except PolicyError as exc:
        raise ConfigError(f"otel.export_after: {exc}") from None
    content = raw.get("content", False)
    if not isinstance(content, bool):
        raise ConfigError(f"otel.content: expected true or false, got {content!r}")
    longest = raw.get("max_attribute_bytes", DEFAULT_MAX_ATTRIBUTE_BYTES)
    if (
        not isinstance(longest, int)
        or isinstance(longest, bool)
        or not MIN_ATTRIBUTE_BYTES <= longest <= MAX_ATTRIBUTE_BYTES
    ):
        raise ConfigError(
            f"otel.max_attribute_bytes: expected an integer from {MIN_ATTRIBUTE_BYTES} "
            f"to {MAX_ATTRIBUTE_BYTES}, got {longest!r}"
        )
    return OtelConfig(endpoint, headers, after, content, longest)


def check_endpoint(where: str, url: str) -> None:
    """An OTLP/HTTP endpoint: an http(s) URL with a host."""
    parts = split_url(where, url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: expected an OTLP/HTTP URL like http://127.0.0.1:4318, "
            f"got {shown_endpoint(url)!r}"
        )


def _headers(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    value = raw.get("headers")
    if value is None:
        text = env.get(ENV_HEADERS, "").strip()
        return _env_headers(text) if text else {}
    if not isinstance(value, dict):
        raise ConfigError('otel.headers: expected a table, like { "x-api-key" = "..." }')
    headers: dict[str, str] = {}
    for name, secret in value.items():
        _check_header(f"otel.headers.{name}", name, secret)
        headers[name] = secret
    return headers


def _env_headers(text: str) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS: ``name=value`` pairs separated by commas, values
    percent-encoded (the OTLP exporter specification)."""
    headers: dict[str, str] = {}
    for pair in text.split(","):
        name, eq, secret = pair.partition("=")
        if not eq:
            raise ConfigError(f"{ENV_HEADERS}: expected name=value pairs separated by commas")
        name = name.strip()
        _check_header(f"{ENV_HEADERS} {name}", name, unquote(secret.strip()))
        headers[name] = unquote(secret.strip())
    return headers


def _check_header(where: str, name: Any, secret: Any) -> None:
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ConfigError(f"{where}: not a valid HTTP header name")
    if not isinstance(secret, str):
        raise ConfigError(f"{where}: expected a string")
    # The value is a secret: it is not repeated.
    # Nor spaces at its ends: HTTP strips them, and requests refuses a value that starts
    # with one, quoting it in its error.
    if not secret or secret != secret.strip() or not (secret.isascii() and secret.isprintable()):
        raise ConfigError(
            f"{where}: must be printable ASCII, not empty, without spaces at its ends "
            "(it is sent as a header)"
        )
