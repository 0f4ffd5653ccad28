"""What happened in a session, from its recorded frames: pure, for ``recorder show``.

The input is what the read side fetched (the session's frames with their JSON
parsed, its tasks, the recording connections around it); the output is a
:class:`Story`: the status timeline, tool calls paired start to result, errors,
the daemon's metrics, frame counts, and the spans when nothing was recording.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from recorder.protocol.index import TERMINAL_STATUSES


class StoryFrame(NamedTuple):
    id: int
    connection_id: int
    seq: int
    direction: str
    received_us: int
    monotonic_ns: int
    type: str | None
    task_id: str | None
    size: int
    # The parsed JSON object, for the types a story reads (None for the rest).
    obj: dict[str, Any] | None


class Recording(NamedTuple):
    """A connection that recorded: when it was up."""

    id: int
    role: str
    url: str
    client_addr: str | None
    opened_us: int
    closed_us: int | None
    close_code: int | None
    closed_by: str | None
    error: str | None


@dataclass(frozen=True)
class StatusChange:
    at_us: int
    status: str
    frame_id: int


@dataclass(frozen=True)
class ToolCall:
    name: str
    started_us: int
    input: Any
    ended_us: int | None = None
    duration_s: float | None = None
    status: str | None = None  # "completed", "failed", or None while unanswered
    error: str | None = None
    connection_id: int = 0


@dataclass(frozen=True)
class ErrorLine:
    at_us: int
    source: str  # the frame type: error, task_failed, tool_call_result
    text: str


@dataclass(frozen=True)
class Gap:
    start_us: int
    end_us: int

    @property
    def seconds(self) -> float:
        return (self.end_us - self.start_us) / 1e6


@dataclass(frozen=True)
class ConnectionShare:
    id: int
    role: str
    url: str
    client_addr: str | None
    frames: int
    opened_us: int
    closed_us: int | None
    close_code: int | None


@dataclass
class Story:
    session_id: str
    start_us: int
    end_us: int | None
    timeline: list[StatusChange] = field(default_factory=list)
    tools: list[ToolCall] = field(default_factory=list)
    errors: list[ErrorLine] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    connections: list[ConnectionShare] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        return None if self.end_us is None else (self.end_us - self.start_us) / 1e6

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["duration_s"] = self.duration_s
        out["gaps"] = [{**asdict(g), "seconds": g.seconds} for g in self.gaps]
        return out


# The frame types whose payload a story reads; stream chunks are only counted.
READ_TYPES = (
    "session_status_update",
    "session_spawned",
    "tool_call_start",
    "tool_call_result",
    "task_failed",
    "error",
)


def span(session: Mapping[str, Any]) -> tuple[int, int | None]:
    """When a session was active: from its start to its end (None: not ended); a
    finished session with no end time ended when it was last seen."""
    start = min(session["first_seen_us"], session["started_at_us"] or session["first_seen_us"])
    end: int | None = session["ended_at_us"]
    if end is None and session["status"] in TERMINAL_STATUSES:
        end = session["last_seen_us"]
    return start, end


def tell(
    session: dict[str, Any],
    frames: list[StoryFrame],
    recordings: list[Recording],
    now_us: int,
) -> Story:
    """The story of one session (``session`` is its row from the sessions table)."""
    start, end = span(session)
    story = Story(session["id"], start, end)
    story.by_type = dict(Counter(f.type or "(not JSON)" for f in frames).most_common())
    story.timeline = _timeline(frames)
    story.tools = _tools(frames)
    story.errors = _errors(frames)
    story.metrics = _metrics(frames)
    per_connection = Counter(f.connection_id for f in frames)
    story.connections = [
        ConnectionShare(
            r.id,
            r.role,
            r.url,
            r.client_addr,
            per_connection[r.id],
            r.opened_us,
            r.closed_us,
            r.close_code,
        )
        for r in recordings
        if per_connection[r.id]
    ]
    story.gaps = gaps(start, end if end is not None else now_us, recordings, now_us)
    return story


def _session_status(frame: StoryFrame) -> str | None:
    obj = frame.obj or {}
    session = obj.get("session")
    if isinstance(session, dict) and isinstance(session.get("status"), str):
        return str(session["status"])
    return None


def _timeline(frames: list[StoryFrame]) -> list[StatusChange]:
    changes: list[StatusChange] = []
    for frame in frames:
        if frame.type not in ("session_status_update", "session_spawned"):
            continue
        status = _session_status(frame)
        if status is not None and (not changes or changes[-1].status != status):
            changes.append(StatusChange(frame.received_us, status, frame.id))
    return changes


def _tools(frames: list[StoryFrame]) -> list[ToolCall]:
    """Starts paired with results in order, per connection and tool name."""
    calls: list[ToolCall] = []
    open_calls: dict[tuple[int, str | None], list[tuple[int, StoryFrame]]] = {}
    for frame in frames:
        data = (frame.obj or {}).get("data")
        if not isinstance(data, dict):
            continue
        # A name is a string; anything else (a list cannot even be a key) is no name.
        name = data.get("toolName") if isinstance(data.get("toolName"), str) else None
        key = (frame.connection_id, name)
        if frame.type == "tool_call_start":
            calls.append(
                ToolCall(
                    str(name),
                    frame.received_us,
                    data.get("toolInput"),
                    connection_id=frame.connection_id,
                )
            )
            open_calls.setdefault(key, []).append((len(calls) - 1, frame))
        elif frame.type == "tool_call_result":
            waiting = open_calls.get(key)
            status = data.get("status") if isinstance(data.get("status"), str) else None
            result = data.get("result")
            error = result.get("error") if isinstance(result, dict) else None
            if waiting:
                i, start = waiting.pop(0)
                # Within one connection the recorder's monotonic clock is exact.
                seconds = (frame.monotonic_ns - start.monotonic_ns) / 1e9
                calls[i] = ToolCall(
                    calls[i].name,
                    calls[i].started_us,
                    calls[i].input,
                    frame.received_us,
                    round(seconds, 6),
                    status,
                    str(error) if error is not None else None,
                    frame.connection_id,
                )
            else:  # a result whose start was not recorded
                calls.append(
                    ToolCall(
                        str(name),
                        frame.received_us,
                        None,
                        frame.received_us,
                        None,
                        status,
                        str(error) if error is not None else None,
                        frame.connection_id,
                    )
                )
    return calls


def _errors(frames: list[StoryFrame]) -> list[ErrorLine]:
    lines: list[ErrorLine] = []
    for frame in frames:
        obj = frame.obj or {}
        if frame.type in ("error", "task_failed") and isinstance(obj.get("error"), str):
            lines.append(ErrorLine(frame.received_us, frame.type, obj["error"]))
        elif frame.type == "tool_call_result":
            data = obj.get("data")
            result = data.get("result") if isinstance(data, dict) else None
            if isinstance(result, dict) and result.get("error") is not None:
                lines.append(ErrorLine(frame.received_us, frame.type, str(result["error"])))
    return lines


def _metrics(frames: list[StoryFrame]) -> dict[str, Any]:
    """The session's metrics as the daemon last reported them."""
    for frame in reversed(frames):
        session = (frame.obj or {}).get("session")
        if isinstance(session, dict) and isinstance(session.get("metrics"), dict):
            return dict(session["metrics"])
    return {}


def gaps(start_us: int, end_us: int, recordings: list[Recording], now_us: int) -> list[Gap]:
    """Spans of [start, end] when no recording connection was up."""
    spans = sorted(
        (r.opened_us, r.closed_us if r.closed_us is not None else now_us) for r in recordings
    )
    found: list[Gap] = []
    cursor = start_us
    for opened, closed in spans:
        if closed <= cursor:
            continue
        if opened >= end_us:
            break
        if opened > cursor:
            found.append(Gap(cursor, opened))
        cursor = max(cursor, closed)
    if cursor < end_us:
        found.append(Gap(cursor, end_us))
    return found
