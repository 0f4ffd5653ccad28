"""What the read library returns: named rows, one type per table, read by name.

Built from a reader's rows by their columns' names, so that a copy of a database
made by an older recorder (without a column a later migration added) reads with
that column's default. Frames, the many, are NamedTuples built from a statement
that selects :data:`FRAME_COLUMNS` in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Self

# The columns of a frame, in the order a Frame takes them.
FRAME_COLUMNS = (
    "id, connection_id, seq, direction, received_at_us, monotonic_ns, opcode, size, type, "
    "session_id, task_id, parse_error, payload, payload_bytes"
)


class Frame(NamedTuple):
    id: int
    connection_id: int
    seq: int
    # "in": from the daemon; "out": to it (for a proxied conversation, what the UI sent).
    direction: str
    received_at_us: int
    monotonic_ns: int
    opcode: int
    size: int
    type: str | None
    session_id: str | None
    task_id: str | None
    parse_error: str | None
    # Exactly one of these holds the frame: its text, or its bytes.
    payload: str | None
    payload_bytes: bytes | None

    @property
    def data(self) -> bytes:
        """The frame as it crossed the wire."""
        if self.payload is not None:
            return self.payload.encode()
        return bytes(self.payload_bytes or b"")


class Named:
    """A dataclass row made from a reader's row by column names (missing: defaults)."""

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Self:
        keys = set(row.keys())
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in keys})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Session(Named):
    id: str
    status: str | None = None
    orchestrator_id: str | None = None
    session_type: str | None = None
    task_id: str | None = None
    task_description: str | None = None
    # The recorder's own times: when it first and last saw the session, when it saw it
    # at work, and when it recorded its final status.
    first_seen_us: int = 0
    last_seen_us: int = 0
    active_us: int | None = None
    finished_us: int | None = None
    # The daemon's startedAt/endedAt, as it said them.
    started_at_us: int | None = None
    ended_at_us: int | None = None
    frame_count: int = 0
    last_error: str | None = None
    instance: str = "default"
    # "purging 12", "compacting 12": a cleanup run part-way through it.
    cleanup_state: str | None = None


@dataclass(frozen=True)
class Task(Named):
    session_id: str
    task_id: str
    description: str | None = None
    status: str | None = None
    first_seen_us: int = 0
    last_seen_us: int = 0
    started_at_us: int | None = None
    ended_at_us: int | None = None
    frame_count: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Connection(Named):
    """A recording connection: the recorder's link, or a UI's conversation through the
    proxy (both halves under one id)."""

    id: int
    role: str
    url: str
    client_addr: str | None = None
    opened_at_us: int = 0
    closed_at_us: int | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None
    error: str | None = None
    frame_count: int = 0
    instance: str = "default"


@dataclass(frozen=True)
class CleanupRun(Named):
    id: int
    policy: str
    action: str
    trigger: str
    dry_run: int
    started_us: int
    ended_us: int
    matched: int
    acted: int
    # JSON: what was done (or would be) to each session, the rest counted.
    actions: str
    error: str | None = None
    instance: str | None = None
    # "running", "done" or "interrupted" (a copy made before migration 0011: done).
    state: str = "done"
    frames: int | None = None


@dataclass(frozen=True)
class Instance(Named):
    """What a recorder last said about itself (its heartbeat)."""

    name: str
    pid: int
    host: str
    started_us: int
    heartbeat_us: int
    # JSON: the link's state, its last error, the proxy's clients, frames recorded.
    state: str


@dataclass(frozen=True)
class Tally(Named):
    """Frames and bytes of one kind (a type, a day) from the daily rollup."""

    frames: int
    bytes: int
    type: str | None = None
    day_us: int | None = None
