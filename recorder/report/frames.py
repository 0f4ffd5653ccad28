"""What the report learns from a window's frames, folded one at a time: tool calls
paired start to result with their durations, each session's first error, and the
tokens each session last said it used. Pure.

Starts pair with results as a session's story pairs them
(:meth:`recorder.protocol.story.Teller._tool`): in order, per connection, session
and tool name, the duration on the recorder's monotonic clock (exact within one
connection). What the fold holds is bounded by the window's tool names and sessions
(names past ``MAX_TOOLS`` are counted together, calls waiting past ``MAX_WAITING``
given up on), plus one duration per answered call.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from recorder.protocol.tame import one_line

# Tool names counted one by one; past this many, the rest are counted together (a
# daemon that makes up names cannot make the report grow).
MAX_TOOLS = 100
OTHER_TOOLS = "(other tools)"
NO_NAME = "(no name)"
# Calls waiting for a result; past this many, the oldest is given up on.
MAX_WAITING = 10_000
# What the report keeps of an error's text.
ERROR_CHARS = 300


class Folded(Protocol):
    """A frame as the fold reads it (:class:`recorder.db.report_reads.ReportFrame`)."""

    @property
    def connection_id(self) -> int: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def received_us(self) -> int: ...
    @property
    def monotonic_ns(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def obj(self) -> dict[str, Any]: ...


@dataclass
class ToolTally:
    """One tool's calls in the window: how many, how many failed or went unanswered,
    and the duration in seconds of each answered one."""

    calls: int = 0
    failed: int = 0
    unanswered: int = 0
    durations: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class FirstError:
    at_us: int
    source: str  # the frame type: error, task_failed, tool_call_result
    text: str


class FrameFold:
    """The window's frames, folded in recording order (:meth:`add`)."""

    def __init__(self) -> None:
        self.tools: dict[str, ToolTally] = {}
        self.errors: dict[str, FirstError] = {}
        self.tokens: dict[str, int | float] = {}
        # Calls waiting for their result, oldest first: number -> (key, name, started_ns);
        # per key (connection, session, name) their numbers, the order results pair in.
        self._waiting: OrderedDict[int, tuple[tuple[int, str | None, int], str, int]] = (
            OrderedDict()
        )
        self._queues: dict[tuple[int, str | None, int], deque[int]] = {}
        self._number = 0

    def add(self, frame: Folded) -> None:
        if frame.type in ("tool_call_start", "tool_call_result"):
            self._tool(frame)
        self._error(frame)
        session = frame.obj.get("session")
        if isinstance(session, dict):
            metrics = session.get("metrics")
            used = metrics.get("tokensUsed") if isinstance(metrics, dict) else None
            sid = frame.session_id or session.get("id")
            # A bool is an int to Python, and no count.
            if isinstance(sid, str) and isinstance(used, int | float):
                if not isinstance(used, bool):
                    self.tokens[sid] = used

    def done(self) -> dict[str, ToolTally]:
        """The tools' tallies, the calls still waiting counted as unanswered."""
        for _key, name, _ns in self._waiting.values():
            self._tally(name).unanswered += 1
        self._waiting.clear()
        self._queues.clear()
        return self.tools

    def _tally(self, name: str) -> ToolTally:
        if name not in self.tools and len(self.tools) >= MAX_TOOLS:
            name = OTHER_TOOLS
        return self.tools.setdefault(name, ToolTally())

    def _tool(self, frame: Folded) -> None:
        data = frame.obj.get("data")
        if not isinstance(data, dict):
            return
        raw = data.get("toolName")
        name = raw if isinstance(raw, str) else NO_NAME
        # The key holds the name's hash: names are the daemon's, of any length.
        key = (frame.connection_id, frame.session_id, hash(name))
        if frame.type == "tool_call_start":
            self._tally(name).calls += 1
            self._number += 1
            self._waiting[self._number] = (key, name, frame.monotonic_ns)
            self._queues.setdefault(key, deque()).append(self._number)
            if len(self._waiting) > MAX_WAITING:  # the oldest is given up on: no result
                number, (old_key, old_name, _) = self._waiting.popitem(last=False)
                self._queues[old_key].remove(number)
                if not self._queues[old_key]:
                    del self._queues[old_key]
                self._tally(old_name).unanswered += 1
            return
        tally = self._tally(name)
        tally.failed += data.get("status") == "failed"
        queue = self._queues.get(key)
        if not queue:  # a result whose start was not recorded (or came before the window)
            tally.calls += 1
            return
        number = queue.popleft()
        if not queue:
            del self._queues[key]
        _, _, started_ns = self._waiting.pop(number)
        tally.durations.append(round((frame.monotonic_ns - started_ns) / 1e9, 6))

    def _error(self, frame: Folded) -> None:
        sid = frame.session_id
        if sid is None or sid in self.errors:
            return
        obj = frame.obj
        text: Any = None
        if frame.type in ("error", "task_failed") and isinstance(obj.get("error"), str):
            text = obj["error"]
        elif frame.type == "tool_call_result":
            data = obj.get("data")
            result = data.get("result") if isinstance(data, dict) else None
            if isinstance(result, dict) and result.get("error") is not None:
                text = str(result["error"])
        if text is not None:
            self.errors[sid] = FirstError(
                frame.received_us, frame.type, one_line(text, ERROR_CHARS)
            )


def percentile(ordered: list[float], p: int) -> float | None:
    """The nearest-rank percentile of sorted values: the smallest value with at least
    ``p`` percent of them at or below it (None for none). Exact, never interpolated: a
    p95 is a duration some call took."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n p / 100), in integers
    return ordered[rank - 1]
