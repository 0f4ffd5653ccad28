"""What a session's trace is made of, folded from its recorded frames one at a time:
tool calls paired start to result, streams from start to end, tasks from their first
frame to their outcome, the final status, the daemon's metrics, the session's own
error. Pure; :mod:`recorder.otel.build` makes spans of it.

Starts pair with results as a session's story pairs them
(:meth:`recorder.protocol.story.Teller._tool`): in order, per connection and tool
name. A stream is a connection's ``stream_start`` to its ``stream_end``; its chunks
are not read here (a stream of a million chunks is counted by the database,
:meth:`recorder.db.otel_reads.OtelReads.chunks`): the fold says between which frame
ids of which connection they lie.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from recorder.protocol.frames import OUT
from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.protocol.timeline import NOT_RUNNING

# The frame types whose object the trace reads (the rest of a session's frames, its
# stream chunks mostly, only counted).
TRACE_TYPES = (
    "session_status_update",
    "session_spawned",
    "execute_task",
    "task_executing",
    "task_completed",
    "task_failed",
    "tool_call_start",
    "tool_call_result",
    "stream_start",
    "stream_end",
    "error",
)
TASK_TYPES = frozenset({"execute_task", "task_executing", "task_completed", "task_failed"})
STATUS_TYPES = frozenset({"session_status_update", "session_spawned"})
# Calls waiting for a result; past this many, the oldest is given up on (unanswered).
MAX_WAITING = 10_000
# Tasks told apart; a daemon that makes up task ids cannot make the fold grow past it.
MAX_TASKS = 10_000


class TraceFrame(NamedTuple):
    """A frame as the trace reads it."""

    id: int
    connection_id: int
    direction: str
    received_us: int
    monotonic_ns: int
    type: str | None
    task_id: str | None
    # The parsed object, for TRACE_TYPES ({} for the rest, or a frame that is none).
    obj: dict[str, Any]


class Moment(NamedTuple):
    """When a frame was recorded: the recorder's clock, and its monotonic clock on
    that connection (exact durations within a connection)."""

    id: int
    connection_id: int
    received_us: int
    monotonic_ns: int

    @property
    def ns(self) -> int:
        return self.received_us * 1000


def end_ns(start: Moment, end: Moment) -> int:
    """The end of a span from ``start`` to ``end`` in epoch ns: on one connection the
    monotonic clock gives the duration exactly, across two the receive times do."""
    if start.connection_id == end.connection_id and end.monotonic_ns >= start.monotonic_ns:
        return start.ns + (end.monotonic_ns - start.monotonic_ns)
    return max(end.ns, start.ns)


def moment(frame: TraceFrame) -> Moment:
    return Moment(frame.id, frame.connection_id, frame.received_us, frame.monotonic_ns)


@dataclass
class ToolRun:
    name: str | None
    # None: a result whose start was not recorded.
    start: Moment | None
    arguments: Any = None
    end: Moment | None = None
    status: str | None = None
    result: Any = None


@dataclass
class StreamRun:
    """One stream: its chunks are the connection's stream_chunk frames with ids in
    (after_id, before_id) (before_id None: to the session's last frame)."""

    connection_id: int
    after_id: int
    start: Moment | None
    end: Moment | None = None
    before_id: int | None = None


class Chunks(NamedTuple):
    """A stream's chunks as the database counted them: how many, the first and last
    (None: none), and their text from the start (None: not read, content off)."""

    total: int
    first: Moment | None
    last: Moment | None
    text: str | None = None


@dataclass
class TaskRun:
    task_id: str
    first: Moment
    end: Moment | None = None
    status: str | None = None
    error: str | None = None
    description: str | None = None


@dataclass
class Folded:
    first: Moment | None = None
    tools: list[ToolRun] = field(default_factory=list)
    streams: list[StreamRun] = field(default_factory=list)
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # The latest status seen, and the frame that first showed it.
    status: str | None = None
    status_at: Moment | None = None
    # The latest error that was the session's own (not a request turned down).
    own_error: str | None = None
    tasks_left_out: int = 0


class TraceFold:
    """A session's frames, folded in recording order (:meth:`add`)."""

    def __init__(self) -> None:
        self.folded = Folded()
        # Calls waiting for their result: per (connection, tool name) their indexes
        # in folded.tools, oldest first; and all of them, oldest first.
        self._queues: dict[tuple[int, str | None], deque[int]] = {}
        self._waiting: deque[tuple[tuple[int, str | None], int]] = deque()
        self._open: dict[int, StreamRun] = {}
        self._boundary: dict[int, int] = {}

    def add(self, frame: TraceFrame) -> None:
        f = self.folded
        if f.first is None or frame.received_us < f.first.received_us:
            f.first = moment(frame)
        kind = frame.type
        if kind in ("tool_call_start", "tool_call_result"):
            self._tool(frame)
        elif kind in ("stream_start", "stream_end"):
            self._stream(frame)
        elif kind in STATUS_TYPES:
            self._status(frame)
        elif kind == "error" and frame.direction != OUT:
            error = frame.obj.get("error")
            if isinstance(error, str):
                f.own_error = error
        if kind in TASK_TYPES and frame.task_id is not None:
            self._task(frame, frame.task_id)

    def done(self) -> Folded:
        """What was folded; the streams still open end at the session's last chunk."""
        self._open.clear()
        return self.folded

    def _tool(self, frame: TraceFrame) -> None:
        data = frame.obj.get("data")
        if not isinstance(data, dict):
            return
        raw = data.get("toolName")
        name = raw if isinstance(raw, str) else None
        key = (frame.connection_id, name)
        tools = self.folded.tools
        if frame.type == "tool_call_start":
            tools.append(ToolRun(name, moment(frame), data.get("toolInput")))
            self._queues.setdefault(key, deque()).append(len(tools) - 1)
            self._waiting.append((key, len(tools) - 1))
            if len(self._waiting) > MAX_WAITING:
                self._give_up()
            return
        status = data.get("status") if isinstance(data.get("status"), str) else None
        queue = self._queues.get(key)
        if not queue:  # a result whose start was not recorded (or was given up on)
            tools.append(ToolRun(name, None, None, moment(frame), status, data.get("result")))
            return
        index = queue.popleft()
        if not queue:
            del self._queues[key]
        call = tools[index]
        call.end, call.status, call.result = moment(frame), status, data.get("result")

    def _give_up(self) -> None:
        """The oldest call still waiting stays unanswered (its result, if it comes,
        pairs with none)."""
        while self._waiting:
            key, index = self._waiting.popleft()
            queue = self._queues.get(key)
            if queue and queue[0] == index:
                queue.popleft()
                if not queue:
                    del self._queues[key]
                return

    def _stream(self, frame: TraceFrame) -> None:
        c = frame.connection_id
        run = self._open.pop(c, None)
        if frame.type == "stream_start":
            if run is not None:  # started again without an end: it ended here
                run.before_id = frame.id
            run = StreamRun(c, frame.id, moment(frame))
            self._open[c] = run
            self.folded.streams.append(run)
        else:
            if run is None:  # no start recorded: it began after the last boundary
                run = StreamRun(c, self._boundary.get(c, 0), None)
                self.folded.streams.append(run)
            run.end, run.before_id = moment(frame), frame.id
        self._boundary[c] = frame.id

    def _status(self, frame: TraceFrame) -> None:
        session = frame.obj.get("session")
        if not isinstance(session, dict):
            return
        f = self.folded
        status = session.get("status")
        if isinstance(status, str) and status != f.status:
            f.status, f.status_at = status, moment(frame)
        if isinstance(session.get("metrics"), dict):
            f.metrics = dict(session["metrics"])

    def _task(self, frame: TraceFrame, task_id: str) -> None:
        f = self.folded
        run = f.tasks.get(task_id)
        if run is None:
            if len(f.tasks) >= MAX_TASKS:
                f.tasks_left_out += 1
                return
            run = f.tasks[task_id] = TaskRun(task_id, moment(frame))
        if frame.type == "execute_task":
            payload = frame.obj.get("payload")
            text = payload.get("task") if isinstance(payload, dict) else None
            if isinstance(text, str) and run.description is None:
                run.description = text
        elif frame.type == "task_executing":
            run.status = run.status or "running"
        elif frame.type == "task_completed":
            run.end, run.status = moment(frame), "completed"
        elif frame.type == "task_failed":
            error = frame.obj.get("error")
            run.end, run.status = moment(frame), "failed"
            run.error = error if isinstance(error, str) else None
            if run.error is not None and NOT_RUNNING not in run.error:
                f.own_error = run.error

    @staticmethod
    def final(folded: Folded, status: str | None) -> Moment | None:
        """The frame that first showed the session's final status ``status``."""
        if status in TERMINAL_STATUSES and folded.status == status:
            return folded.status_at
        return None
