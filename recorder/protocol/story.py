"""What happened in a session, from its recorded frames: pure, for ``recorder show``.

The input is what the read side fetched (the session's frames with their JSON
parsed, and the entries of the sessions_list replies that named it, in recording
order; the recording connections around it); the output is a :class:`Story`: the
status timeline, each task's outcome (:mod:`recorder.protocol.timeline`), tool calls
paired start to result, errors, the daemon's metrics, frame counts, what each
connection did, and the spans when nothing was recording. The frames are folded one
at a time (:class:`Teller`), so a session of millions of frames is told in the
memory of a short one.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict, deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

from recorder.protocol.kept import Kept
from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.protocol.tame import one_line
from recorder.protocol.timeline import LISTED, Course, StatusChange, TaskOutcome

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
    # The frames it stands for: a connection's frames of a type the story only counts
    # (stream chunks), folded into one at the first of them.
    counted: int = 1


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
    """A connection that saw the session, and what it did (a timeline's Conduct)."""

    id: int
    role: str
    url: str
    client_addr: str | None
    frames: int
    opened_us: int
    closed_us: int | None
    close_code: int | None
    listed: int = 0
    asked: dict[str, int] = field(default_factory=dict)


@dataclass
class Story:
    session_id: str
    # From its first recorded frame to when the recording saw it reach its final
    # status (None: not ended); the daemon's clock decides neither.
    start_us: int
    end_us: int | None
    timeline: list[StatusChange] = field(default_factory=list)
    # Each task's own outcome, by task id; the requests the daemon turned down.
    outcomes: dict[str, TaskOutcome] = field(default_factory=dict)
    rejected: list[TaskOutcome] = field(default_factory=list)
    # The latest error that was the session's own, and whether the latest of all
    # (the session row's last_error) turned a request down instead.
    own_error: str | None = None
    last_error_rejected: bool = False
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
    """When a session was active by the recording's own evidence: from the first frame
    that showed it to when the recorder saw it end (None: not ended). The daemon's
    startedAt/endedAt are never believed (a startedAt a year back made a gap of a year)."""
    end: int | None = None
    if session["status"] in TERMINAL_STATUSES:
        end = session.get("finished_us") or session["last_seen_us"]
    return session["first_seen_us"], end


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
    tasks: Collection[str] | None = None,
) -> Story:
    """The story of one session (``session`` is its row from the sessions table)."""
    teller = Teller(session, keep=keep, longest=longest, tasks=tasks)
    for frame in frames:
        teller.add(frame)
    return teller.told(recordings, now_us)


class Teller:
    """A session's story told one frame at a time, in recording order, holding only
    aggregates: counts, the latest metrics, and of each list that grows with the
    session (status changes, tool calls, errors) the first and last ``keep`` items.
    Its memory does not grow with the session. With ``longest``, every text it keeps
    is cut to that many characters (:func:`~recorder.protocol.tame.one_line`): for a
    person's screen, where whole values (``--format json``) are not wanted. ``tasks``: the
    task ids whose outcomes are told (all when None)."""

    def __init__(
        self,
        session: Mapping[str, Any],
        *,
        keep: int = KEEP,
        longest: int | None = None,
        tasks: Collection[str] | None = None,
    ) -> None:
        self.session = session
        self.longest = longest
        self.keep = keep
        self.by_type: Counter[str] = Counter()
        self.course = Course(keep, tasks=tasks, text=self._text)
        self.tools: Kept[ToolCall] = Kept(keep)
        self.errors: Kept[ErrorLine] = Kept(keep)
        self.tools_failed = 0
        self.metrics: dict[str, Any] = {}
        self.first_us: int | None = None
        # Calls waiting for their result, oldest first: number -> (key, started_ns);
        # and per (connection, tool name) their numbers, the order results pair in.
        self._waiting: OrderedDict[int, tuple[tuple[int, int], int]] = OrderedDict()
        self._queues: dict[tuple[int, int], deque[int]] = {}

    @property
    def connections(self) -> Collection[int]:
        """The connections that carried the session's frames, or listed it."""
        return self.course.conduct.keys()

    def add(self, frame: StoryFrame) -> None:
        if self.first_us is None or frame.received_us < self.first_us:
            self.first_us = frame.received_us
        rejected = self.course.add(frame)
        if frame.type != LISTED:  # a listing is no frame of the session's
            kind = frame.type or "(not JSON)"
            if kind in self.by_type or len(self.by_type) < MAX_TYPES:
                self.by_type[kind] += frame.counted
            else:  # a daemon that makes up types cannot make the counter grow
                self.by_type[OTHER_TYPES] += frame.counted
        if frame.obj is None:
            return
        if frame.type in ("tool_call_start", "tool_call_result"):
            self._tool(frame)
        if not rejected:
            self._error(frame)
        session = frame.obj.get("session")
        if isinstance(session, dict) and isinstance(session.get("metrics"), dict):
            self.metrics = dict(session["metrics"])

    def ends(self) -> tuple[int, int | None]:
        """The session's :func:`span`, up to the frame that first showed its final status."""
        start, end = span(self.session)
        if self.first_us is not None:
            start = min(start, self.first_us)
        course = self.course
        if course.over and course.status == self.session["status"]:
            end = course.status_us
        return start, end

    def told(self, recordings: list[Recording], now_us: int) -> Story:
        start, end = self.ends()
        course = self.course
        # A link that dropped every minute for a month: 43 000 of each, kept to a few.
        shares: Kept[ConnectionShare] = Kept(self.keep)
        for r in recordings:
            did = course.conduct.get(r.id)
            if did is not None:
                shares.add(
                    ConnectionShare(
                        *(r.id, r.role, r.url, r.client_addr, did.frames),
                        *(r.opened_us, r.closed_us, r.close_code, did.listed, did.asked),
                    )
                )
        found: Kept[Gap] = Kept(self.keep)
        for gap in gaps(start, end if end is not None else now_us, recordings, now_us):
            found.add(gap)
        return Story(
            self.session["id"],
            start,
            end,
            timeline=course.timeline.items,
            outcomes=dict(course.outcomes),
            rejected=course.rejected.items,
            own_error=course.own_error,
            last_error_rejected=course.last_error_rejected,
            tools=self.tools.items,
            errors=self.errors.items,
            metrics=self.metrics,
            by_type=dict(self.by_type.most_common()),
            connections=shares.items,
            gaps=found.items,
            tool_calls=self.tools.total,
            tools_failed=self.tools_failed,
            keep=self.keep,
            left_out={
                "timeline": course.timeline.left_out,
                "rejected": course.rejected.left_out,
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
