"""What happened in a session, from its recorded frames: pure, for ``recorder show``.

The input is what the read side fetched (the session's frames with their JSON
parsed, in recording order, and the recording connections around it); the output is
a :class:`Story`: the status timeline, tool calls paired start to result, errors,
the daemon's metrics, frame counts, and the spans when nothing was recording. The
frames are folded one at a time (:class:`Teller`), so a session of millions of
frames is told in the memory of a short one.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

from recorder.protocol.kept import Kept
from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.protocol.tame import one_line

# Of each list that grows with the session, the first and the last this many.
KEEP = 10
# Frame types counted one by one; past this many, the rest are counted together.
MAX_TYPES = 100
OTHER_TYPES = "(other types)"
# Tool calls waiting for a result; past this many, the oldest is given up on.
MAX_WAITING = 10_000


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
    # All the tool calls, and how many failed (``tools`` keeps some of them).
    tool_calls: int = 0
    tools_failed: int = 0
    # Each long list holds its first ``keep`` and its last ``keep`` items; how many
    # were left out between them, by list.
    keep: int = KEEP
    left_out: dict[str, int] = field(default_factory=dict)

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


# A daemon time this far from the recorder's is flagged: the daemon's clock, or (for
# a start) a session older than its recording.
CLOCK_FLAG_US = 86_400 * 1_000_000


def clock_notes(session: Mapping[str, Any]) -> list[str]:
    """Where the daemon's startedAt/endedAt stand more than a day from the recorder's
    own times for the session: said, never believed (no deletion is decided by them)."""
    notes = []
    pairs = (
        ("startedAt", session.get("started_at_us"), session.get("first_seen_us"), "first saw it"),
        ("endedAt", session.get("ended_at_us"), session.get("finished_us"), "saw it end"),
    )
    for name, daemon, ours, what in pairs:
        if daemon is None or ours is None or abs(daemon - ours) <= CLOCK_FLAG_US:
            continue
        days = abs(daemon - ours) / CLOCK_FLAG_US
        side = "after" if daemon > ours else "before"
        notes.append(f"the daemon's {name} is {days:,.1f} days {side} the recorder {what}")
    return notes


def partly(session: Mapping[str, Any]) -> str | None:
    """ "purged" or "compacted" while a cleanup run is part-way through the session (or
    was, when it was cut short): some of its frames are gone, or folded."""
    state = str(session.get("cleanup_state") or "")
    verb = state.partition(" ")[0]
    return {"purging": "purged", "compacting": "compacted"}.get(verb)


def tell(
    session: Mapping[str, Any],
    frames: Iterable[StoryFrame],
    recordings: list[Recording],
    now_us: int,
    *,
    keep: int = KEEP,
    longest: int | None = None,
) -> Story:
    """The story of one session (``session`` is its row from the sessions table)."""
    teller = Teller(session, keep=keep, longest=longest)
    for frame in frames:
        teller.add(frame)
    return teller.told(recordings, now_us)


class Teller:
    """A session's story told one frame at a time, in recording order, holding only
    aggregates: counts, the latest metrics, and of each list that grows with the
    session (status changes, tool calls, errors) the first and last ``keep`` items.
    Its memory does not grow with the session. With ``longest``, every text it keeps
    is cut to that many characters (:func:`~recorder.protocol.tame.one_line`): for a
    person's screen, where whole values (``--format json``) are not wanted."""

    def __init__(
        self, session: Mapping[str, Any], *, keep: int = KEEP, longest: int | None = None
    ) -> None:
        self.session = session
        self.longest = longest
        self.by_type: Counter[str] = Counter()
        self.per_connection: Counter[int] = Counter()
        self.timeline: Kept[StatusChange] = Kept(keep)
        self.tools: Kept[ToolCall] = Kept(keep)
        self.errors: Kept[ErrorLine] = Kept(keep)
        self.tools_failed = 0
        self.metrics: dict[str, Any] = {}
        self._status: str | None = None
        # Calls waiting for their result, oldest first: number -> (key, started_ns);
        # and per (connection, tool name) their numbers, the order results pair in.
        self._waiting: OrderedDict[int, tuple[tuple[int, int], int]] = OrderedDict()
        self._queues: dict[tuple[int, int], deque[int]] = {}

    def add(self, frame: StoryFrame) -> None:
        kind = frame.type or "(not JSON)"
        if kind in self.by_type or len(self.by_type) < MAX_TYPES:
            self.by_type[kind] += 1
        else:  # a daemon that makes up types cannot make the counter grow
            self.by_type[OTHER_TYPES] += 1
        self.per_connection[frame.connection_id] += 1
        if frame.obj is None:
            return
        if frame.type in ("session_status_update", "session_spawned"):
            status = _session_status(frame)
            if status is not None and status != self._status:
                self._status = status
                self.timeline.add(StatusChange(frame.received_us, self._text(status), frame.id))
        if frame.type in ("tool_call_start", "tool_call_result"):
            self._tool(frame)
        self._error(frame)
        session = frame.obj.get("session")
        if isinstance(session, dict) and isinstance(session.get("metrics"), dict):
            self.metrics = dict(session["metrics"])

    def told(self, recordings: list[Recording], now_us: int) -> Story:
        start, end = span(self.session)
        # A link that dropped every minute for a month: 43 000 of each, kept to a few.
        shares: Kept[ConnectionShare] = Kept(self.timeline.keep)
        for r in recordings:
            if self.per_connection[r.id]:
                shares.add(
                    ConnectionShare(
                        r.id,
                        r.role,
                        r.url,
                        r.client_addr,
                        self.per_connection[r.id],
                        r.opened_us,
                        r.closed_us,
                        r.close_code,
                    )
                )
        found: Kept[Gap] = Kept(self.timeline.keep)
        for gap in gaps(start, end if end is not None else now_us, recordings, now_us):
            found.add(gap)
        return Story(
            self.session["id"],
            start,
            end,
            timeline=self.timeline.items,
            tools=self.tools.items,
            errors=self.errors.items,
            metrics=self.metrics,
            by_type=dict(self.by_type.most_common()),
            connections=shares.items,
            gaps=found.items,
            tool_calls=self.tools.total,
            tools_failed=self.tools_failed,
            keep=self.timeline.keep,
            left_out={
                "timeline": self.timeline.left_out,
                "tools": self.tools.left_out,
                "errors": self.errors.left_out,
                "connections": shares.left_out,
                "gaps": found.left_out,
            },
        )

    def _text(self, text: str) -> str:
        return text if self.longest is None else one_line(text, self.longest)

    def _value(self, value: Any) -> Any:
        """A tool's input: whole, or as its JSON text cut to ``longest``."""
        if self.longest is None or value is None:
            return value
        return self._text(json.dumps(value, ensure_ascii=False))

    def _tool(self, frame: StoryFrame) -> None:
        """Starts paired with results in order, per connection and tool name."""
        data = (frame.obj or {}).get("data")
        if not isinstance(data, dict):
            return
        # A name is a string; anything else (a list cannot even be a key) is no name.
        name = data.get("toolName") if isinstance(data.get("toolName"), str) else None
        # The key holds the name's hash: names are the daemon's, of any length.
        key = (frame.connection_id, hash(name))
        shown = self._text(str(name))
        if frame.type == "tool_call_start":
            call = ToolCall(
                shown,
                frame.received_us,
                self._value(data.get("toolInput")),
                connection_id=frame.connection_id,
            )
            number = self.tools.add(call)
            self._waiting[number] = (key, frame.monotonic_ns)
            self._queues.setdefault(key, deque()).append(number)
            if len(self._waiting) > MAX_WAITING:  # the oldest is given up on: no result
                self._answered(self._waiting.popitem(last=False)[1][0])
            return
        status = data.get("status") if isinstance(data.get("status"), str) else None
        result = data.get("result")
        error = result.get("error") if isinstance(result, dict) else None
        said = self._text(str(error)) if error is not None else None
        self.tools_failed += status == "failed"
        answered = self._answered(key)
        if answered is None:  # a result whose start was not recorded
            call = ToolCall(shown, frame.received_us, None, frame.received_us, None, status, said)
            self.tools.add(replace(call, connection_id=frame.connection_id))
            return
        _, started_ns = self._waiting.pop(answered)
        kept = self.tools.get(answered)
        if kept is not None:
            # Within one connection the recorder's monotonic clock is exact.
            seconds = round((frame.monotonic_ns - started_ns) / 1e9, 6)
            self.tools.set(
                answered,
                replace(
                    kept, ended_us=frame.received_us, duration_s=seconds, status=status, error=said
                ),
            )

    def _answered(self, key: tuple[int, int]) -> int | None:
        """The number of the oldest call waiting under ``key``, taken off its queue."""
        queue = self._queues.get(key)
        if not queue:
            return None
        number = queue.popleft()
        if not queue:
            del self._queues[key]
        return number

    def _error(self, frame: StoryFrame) -> None:
        obj = frame.obj or {}
        if frame.type in ("error", "task_failed") and isinstance(obj.get("error"), str):
            self.errors.add(ErrorLine(frame.received_us, frame.type, self._text(obj["error"])))
        elif frame.type == "tool_call_result":
            data = obj.get("data")
            result = data.get("result") if isinstance(data, dict) else None
            if isinstance(result, dict) and result.get("error") is not None:
                text = self._text(str(result["error"]))
                self.errors.add(ErrorLine(frame.received_us, frame.type, text))


def _session_status(frame: StoryFrame) -> str | None:
    obj = frame.obj or {}
    session = obj.get("session")
    if isinstance(session, dict) and isinstance(session.get("status"), str):
        return str(session["status"])
    return None


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
