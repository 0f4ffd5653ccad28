"""Frame rules: what one classified frame matches, pure and in memory.

Runs beside the classifier, on each frame it has classified (type, ids, the parsed
object) and the session attribution gave it. It keeps what matching needs across
frames, each bounded: the last status seen of each session (a status rule fires on a
change), the frame types the daemon has sent (unknown_type), and the tool calls
waiting for their result (``tool`` with ``result_status``).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from recorder.alerts.occurrence import MAX_SUBJECTS
from recorder.alerts.spec import Pattern, Rule
from recorder.protocol.classify import Classified, id_or_none, text_or_none
from recorder.protocol.frames import F_CONNECTION, F_DIRECTION, IN, OUT, FrameTuple
from recorder.protocol.tame import tamed

# What the daemon's protocol defines (docs/daemon-integration, frames of daemon 1.0.39):
# the types a daemon may send without being new. Requests go the other way.
KNOWN_TYPES = frozenset(
    {
        "health_check_response",
        "error",
        "pong",
        "daemon_status_update",
        "sessions_list",
        "session_status_update",
        "session_spawned",
        "task_executing",
        "task_completed",
        "task_failed",
        "stream_start",
        "stream_chunk",
        "stream_end",
        "tool_call_start",
        "tool_call_result",
    }
)
# Types remembered as seen; a daemon that makes up more is not followed further.
MAX_TYPES = 1024
# Regexes search at most this much of a text: a hostile megabyte must not hold up
# the classifier behind a regex that backtracks.
SEARCH_LIMIT = 256 * 1024
# Tool calls waiting for a result, per (connection, tool name) and in all.
MAX_WAITING = 64
MAX_WAITING_KEYS = 4096

STATUS_TYPES = frozenset({"session_status_update", "session_spawned"})
TASK_STATUSES = {
    "task_executing": "running",
    "task_completed": "completed",
    "task_failed": "failed",
    "execute_task": "requested",
}
TOOL_TYPES = frozenset({"tool_call_start", "tool_call_result"})

# A frame that matched a rule: (subject, what, text, session id), text unshortened.
Match = tuple[str, str, str, str | None]


def watched_types(rules: Iterable[Rule]) -> frozenset[str]:
    """The frame types some rule reads (unknown_type aside, which reads every type)."""
    types: set[str] = set()
    for rule in rules:
        kind = rule.when.kind
        if kind == "session_status":
            types |= STATUS_TYPES | {"sessions_list"}
        elif kind == "task_status":
            types |= TASK_STATUSES.keys()
        elif kind == "error_reply":
            types.add("error")
        elif kind == "tool":
            types |= TOOL_TYPES
        elif kind == "frame_type":
            types |= set(rule.when.values)
    return frozenset(types)


class FrameMemory:
    """What frame matching remembers across frames (see the module)."""

    def __init__(self, types: Iterable[str] = KNOWN_TYPES) -> None:
        self.statuses: OrderedDict[str, str] = OrderedDict()
        self.types: set[str] = set(types)
        # Per rule name, per (connection, tool name): the waiting starts' input texts
        # (None: the input did not match).
        self.waiting: dict[str, OrderedDict[tuple[int, str], deque[str | None]]] = {}

    def status_changes(self, frame: FrameTuple, info: Classified) -> list[tuple[str, str, str]]:
        """The sessions whose status this frame changes: (session id, status, task text)."""
        obj = info.obj
        if obj is None or frame[F_DIRECTION] != IN:
            return []
        if info.type == "sessions_list":
            listed = obj.get("sessions")
            sessions = [s for s in listed if type(s) is dict] if type(listed) is list else []
        else:
            session = obj.get("session")
            sessions = [session] if type(session) is dict else []
        changes = []
        for session in sessions:
            sid, status = id_or_none(session.get("id")), id_or_none(session.get("status"))
            if sid is None or status is None:
                continue
            if self.statuses.get(sid) != status:
                task = session.get("task")
                text = text_or_none(task.get("description")) if type(task) is dict else None
                changes.append((sid, status, text or ""))
            self.remember_status(sid, status)
        return changes

    def remember_status(self, session_id: str, status: str) -> None:
        self.statuses[session_id] = status
        self.statuses.move_to_end(session_id)
        if len(self.statuses) > MAX_SUBJECTS:
            self.statuses.popitem(last=False)

    def new_type(self, frame: FrameTuple, info: Classified) -> bool:
        """Whether the frame is from the daemon and of a type it never sent before (it
        is then known); past MAX_TYPES types, none is new."""
        type_ = info.type
        if type_ is None or frame[F_DIRECTION] != IN or type_ in self.types:
            return False
        return self.know(type_)

    def know(self, type_: str) -> bool:
        """Note ``type_`` as sent by the daemon; whether it was new (and there was room)."""
        if type_ in self.types or len(self.types) >= MAX_TYPES:
            return False
        self.types.add(type_)
        return True

    def forget(self, connection_id: int) -> None:
        """The connection closed: its tool calls get no result."""
        for waiting in self.waiting.values():
            for key in [k for k in waiting if k[0] == connection_id]:
                del waiting[key]


def matches(
    rule: Rule,
    frame: FrameTuple,
    info: Classified,
    session_id: str | None,
    memory: FrameMemory,
    changes: list[tuple[str, str, str]],
) -> Iterator[Match]:
    """What ``frame`` matches of ``rule`` (a frame rule); ``changes`` are the frame's
    :meth:`FrameMemory.status_changes`, computed once for every rule."""
    when = rule.when
    kind = when.kind
    subject = session_id if session_id is not None else f"connection {frame[F_CONNECTION]}"
    if kind == "session_status":
        for sid, status, text in changes:
            if status in when.values:
                yield sid, f"session {status}", text, sid
    elif kind == "task_status":
        task_status = TASK_STATUSES.get(info.type or "")
        direction = OUT if info.type == "execute_task" else IN
        if task_status in when.values and frame[F_DIRECTION] == direction and info.obj is not None:
            error = text_or_none(info.obj.get("error"))
            yield subject, f"task {task_status}", error or info.task_id or "", session_id
    elif kind == "error_reply":
        if info.type == "error" and frame[F_DIRECTION] == IN:
            text = _error_text(info)
            if when.matches is None or _search(when.matches, text):
                yield subject, "error reply", text, session_id
    elif kind == "tool":
        if info.type in TOOL_TYPES and info.obj is not None:
            yield from _tool(rule, frame, info, subject, session_id, memory)
    elif kind == "frame_type":
        if info.type in when.values:
            yield subject, f"frame {info.type}", info.text or "", session_id


def _error_text(info: Classified) -> str:
    error = info.obj.get("error") if info.obj is not None else None
    if type(error) is str:
        return text_or_none(error) or error.encode("utf-8", "backslashreplace").decode()
    return info.text or ""


def _tool(
    rule: Rule,
    frame: FrameTuple,
    info: Classified,
    subject: str,
    session_id: str | None,
    memory: FrameMemory,
) -> Iterator[Match]:
    when = rule.when
    data = info.obj.get("data") if info.obj is not None else None
    name = data.get("toolName") if type(data) is dict else None
    if type(data) is not dict or type(name) is not str or not _glob(when.tool).match(name):
        return
    what = f"tool {name}"
    if info.type == "tool_call_start":
        text = input_text(data.get("toolInput"))
        matched = when.matches is None or _search(when.matches, text)
        if not when.result_status:
            if matched:
                yield subject, f"{what} called", text, session_id
            return
        waiting = memory.waiting.setdefault(rule.name, OrderedDict())
        key = (frame[F_CONNECTION], name)
        queue = waiting.get(key)
        if queue is None:
            queue = waiting[key] = deque(maxlen=MAX_WAITING)
            if len(waiting) > MAX_WAITING_KEYS:
                waiting.popitem(last=False)
        queue.append(text if matched else None)
        return
    if not when.result_status:
        return
    queue = memory.waiting.get(rule.name, OrderedDict()).get((frame[F_CONNECTION], name))
    started = queue.popleft() if queue else None
    status = data.get("status")
    if type(status) is not str or status not in when.result_status:
        return
    if when.matches is not None and started is None:
        return  # its input did not match, or its start was not recorded
    result = data.get("result")
    error = result.get("error") if type(result) is dict else None
    text = started if started is not None else (str(error) if error is not None else "")
    yield subject, f"{what} {status}", text, session_id


def input_text(value: Any) -> str:
    """A tool input as the JSON text ``input_matches`` searches: compact, not ASCII-escaped
    (``{"command":"rm -rf /"}``)."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        # Past orjson: integers beyond 64 bits, nesting past 254, lone surrogates.
        return json.dumps(tamed(value), ensure_ascii=False, separators=(",", ":"))


def _search(pattern: Pattern, text: str) -> bool:
    text = text[:SEARCH_LIMIT]
    try:
        return pattern.search(text) is not None
    except UnicodeEncodeError:  # RE2 reads UTF-8: a lone surrogate is written as U+FFFD
        return pattern.search(text.encode("utf-8", "replace").decode()) is not None


_GLOBS: dict[str, re.Pattern[str]] = {}


def _glob(glob: str | None) -> re.Pattern[str]:
    pattern = _GLOBS.get(glob or "*")
    if pattern is None:
        pattern = _GLOBS[glob or "*"] = re.compile(fnmatch.translate(glob or "*"))
    return pattern
