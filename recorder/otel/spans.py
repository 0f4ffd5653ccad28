"""A session's trace as plain data: spans with fixed ids and recorded times, ready to
send (:mod:`recorder.otel.send`) or to compare. Pure.

Ids are derived, never drawn: a trace id from the recorder instance and the session
id, a span id from those and what the span stands for (a frame id, a task id), each a
SHA-256 cut to 16 or 8 bytes. Exporting a session again, from a backfill or from the
live export, gives the same ids, so a backend can deduplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

# An attribute's value as OTLP carries it.
AttrValue = str | bool | int | float
Attributes = Mapping[str, AttrValue]

SERVICE_NAME = "orchestrator-recorder"


@dataclass(frozen=True)
class SpanEvent:
    name: str
    at_ns: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    span_id: bytes
    # None: the trace's root.
    parent_id: bytes | None
    name: str
    start_ns: int
    end_ns: int
    attributes: Attributes = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    # Status ERROR with this description when not None; otherwise UNSET (the
    # conventions leave a success unset).
    error: str | None = None


@dataclass(frozen=True)
class SessionTrace:
    """One session: one trace, its root first."""

    session_id: str
    # The recorder instance that recorded it (its storage.instance): the resource's
    # service.instance.id, and part of every id.
    instance: str
    trace_id: bytes
    spans: tuple[Span, ...]


def _digest(size: int, *parts: str) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        # Length-prefixed: ("a", "bc") and ("ab", "c") must not meet.
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    out = h.digest()[:size]
    # An all-zero id is invalid in OTLP; one in 2^64 digests, made valid here.
    return out if any(out) else out[:-1] + b"\x01"


def trace_id(instance: str, session_id: str) -> bytes:
    return _digest(16, "trace", instance, session_id)


def span_id(instance: str, session_id: str, kind: str, key: str | int) -> bytes:
    """The id of the span of ``kind`` ("session", "tool", "stream", "task") that
    ``key`` names within the session: the frame id that opened it, or a task id."""
    return _digest(8, "span", instance, session_id, kind, str(key))


def shortened(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, cut at a character, "…" at the cut."""
    # A lone surrogate (JSON can say "\ud800") is no UTF-8: OTLP strings must be.
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode()
    mark = "…".encode()
    return data[: max(limit - len(mark), 0)].decode("utf-8", "ignore") + "…"
