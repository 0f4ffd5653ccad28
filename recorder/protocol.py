"""The daemon protocol as pure functions: classify a frame, derive index updates.

Nothing here does I/O, so every rule is tested without sockets or databases.
Frames are never re-serialized: classification only reads them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson

IN = "in"
OUT = "out"

# WebSocket opcodes, as stored in frames.opcode.
OPCODE_TEXT = 1
OPCODE_BINARY = 2

# An id longer than this is garbage, not an id: keep it out of the indexed columns.
MAX_ID_LENGTH = 256

TERMINAL_STATUSES = frozenset(
    {"completed", "failed", "stopped", "terminated", "cancelled", "canceled", "error", "unknown"}
)
# Set on sessions the index believed active that a later sessions_list no longer names.
LOST_STATUS = "unknown"


class Frame(NamedTuple):
    """One frame as it crossed the wire, before classification.

    The hot paths (link, proxy) build plain tuples in this field order, which are
    several times cheaper to make and to pickle; everything downstream indexes them.
    """

    connection_id: int
    seq: int
    direction: str
    received_us: int
    monotonic_ns: int
    is_text: bool
    data: bytes


# A frame as the hot paths build it: the fields of Frame, in order, in a plain tuple.
FrameTuple = tuple[int, int, str, int, int, bool, bytes]
# Field positions, for code that handles frames as plain tuples.
F_CONNECTION, F_SEQ, F_DIRECTION, F_RECEIVED, F_MONOTONIC, F_IS_TEXT, F_DATA = range(7)


class Classified(NamedTuple):
    type: str | None
    session_id: str | None
    task_id: str | None
    # None when the frame is a JSON object, else the reason it is not.
    parse_error: str | None
    # The exact text when it can be stored as text (UTF-8 text frame without NUL).
    text: str | None
    obj: dict[str, Any] | None


# json.loads() minus its Python wrapper: the C scanner, then a check that only
# whitespace follows (what json.loads does, without the extra calls).
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _loads(text: str) -> Any:
    start = _WHITESPACE.match(text).end()  # type: ignore[union-attr]
    try:
        obj, end = _scan_once(text, start)
    except StopIteration:
        raise ValueError("no JSON value") from None
    if end != len(text) and _WHITESPACE.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise ValueError("extra data")
    return obj


_BINARY = Classified(None, None, None, "binary", None, None)


def classify(data: bytes, is_text: bool) -> Classified:
    """Extract type, session and task ids from a frame, never raising.

    orjson parses the bytes straight off the wire, checking UTF-8 and JSON in one
    C pass (about half the time of the json module per frame). What it rejects
    goes to :func:`_classify_strictly`, the json module's verdict, so a frame is
    classified the same either way: orjson refuses some input json accepts (NaN,
    lone surrogate escapes, nesting past 1024), never the reverse.
    """
    if not is_text:
        return _BINARY
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _classify_strictly(data)
    text = data.decode() if b"\x00" not in data else None
    if type(obj) is not dict:
        return Classified(None, None, None, "not_object", text, None)
    return _classified(obj, text)


def _classify_strictly(data: bytes) -> Classified:
    try:
        decoded = data.decode()
    except UnicodeDecodeError:
        return Classified(None, None, None, "invalid_utf8", None, None)
    storable = decoded if "\x00" not in decoded else None
    try:
        obj = _loads(decoded)
    except RecursionError:
        return Classified(None, None, None, "too_deep", storable, None)
    except ValueError:
        return Classified(None, None, None, "invalid_json", storable, None)
    if not isinstance(obj, dict):
        return Classified(None, None, None, "not_object", storable, None)
    return _classified(obj, storable)


def _classified(obj: dict[str, Any], text: str | None) -> Classified:
    type_ = _id(obj.get("type"))
    session_id, task_id = extract_ids(obj, type_)
    return Classified(type_, session_id, task_id, None, text, obj)


def _id(value: Any) -> str | None:
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    return None


def extract_ids(obj: dict[str, Any], type_: str | None) -> tuple[str | None, str | None]:
    """Session and task id from wherever the protocol puts them.

    Top level (``sessionId``/``taskId``: task_* frames), ``payload`` (client
    requests), ``data`` (stream and tool frames), ``session`` (session_spawned,
    session_status_update: ``session.id`` and ``session.task.id``); the first
    place that has one wins. Runs for every frame, hence the plain lookups.
    """
    get = obj.get
    session_id = _id(get("sessionId"))
    task_id = _id(get("taskId"))
    if session_id is not None and task_id is not None:
        return session_id, task_id
    for key in ("payload", "data"):
        inner = get(key)
        if type(inner) is dict:
            if session_id is None:
                session_id = _id(inner.get("sessionId"))
            if task_id is None:
                task_id = _id(inner.get("taskId"))
                if task_id is None and type_ == "execute_task":
                    # Real daemons name the task by the text the client sent.
                    task_id = _id(inner.get("task"))
    session = get("session")
    if type(session) is dict:
        if session_id is None:
            session_id = _id(session.get("id"))
        task = session.get("task")
        if task_id is None and type(task) is dict:
            task_id = _id(task.get("id"))
    return session_id, task_id


def parse_daemon_time(value: Any) -> int | None:
    """ISO-8601 from the daemon (``2026-11-26T11:28:57.464Z``) to epoch microseconds."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


@dataclass(slots=True)
class SessionDelta:
    """What a batch of frames says about one session; None means "no news"."""

    first_seen_us: int
    last_seen_us: int
    frame_count: int = 0
    orchestrator_id: str | None = None
    session_type: str | None = None
    status: str | None = None
    task_id: str | None = None
    task_description: str | None = None
    started_at_us: int | None = None
    ended_at_us: int | None = None
    last_error: str | None = None


@dataclass(slots=True)
class TaskDelta:
    first_seen_us: int
    last_seen_us: int
    frame_count: int = 0
    description: str | None = None
    status: str | None = None
    started_at_us: int | None = None
    ended_at_us: int | None = None
    error: str | None = None


@dataclass(slots=True)
class IndexBatch:
    """Index changes accumulated over a batch of frames, applied in one go by the store."""

    sessions: dict[str, SessionDelta] = field(default_factory=dict)
    tasks: dict[tuple[str, str], TaskDelta] = field(default_factory=dict)
    connection_frames: dict[int, int] = field(default_factory=dict)
    # Each sessions_list seen: (receive time, the ids it named).
    listings: list[tuple[int, frozenset[str]]] = field(default_factory=list)

    def session(self, session_id: str, at_us: int) -> SessionDelta:
        delta = self.sessions.get(session_id)
        if delta is None:
            delta = self.sessions[session_id] = SessionDelta(at_us, at_us)
        else:
            delta.last_seen_us = max(delta.last_seen_us, at_us)
        return delta

    def task(self, session_id: str, task_id: str, at_us: int) -> TaskDelta:
        key = (session_id, task_id)
        delta = self.tasks.get(key)
        if delta is None:
            delta = self.tasks[key] = TaskDelta(at_us, at_us)
        else:
            delta.last_seen_us = max(delta.last_seen_us, at_us)
        return delta

    def add(self, frame: Sequence[Any], info: Classified) -> None:
        """Fold one classified frame (a :class:`Frame` or plain tuple) into the batch."""
        cid = frame[F_CONNECTION]
        counts = self.connection_frames
        counts[cid] = counts.get(cid, 0) + 1
        at = frame[F_RECEIVED]
        sid = info.session_id
        if sid is not None:
            delta = self.sessions.get(sid)
            if delta is None:
                delta = self.sessions[sid] = SessionDelta(at, at)
            elif at > delta.last_seen_us:
                delta.last_seen_us = at
            delta.frame_count += 1
            if info.task_id is not None:
                self.task(sid, info.task_id, at).frame_count += 1
        obj = info.obj
        if obj is None:
            return
        type_ = info.type
        if type(obj.get("session")) is dict:
            self._session_object(obj["session"], at)
        if type_ == "sessions_list" and frame[F_DIRECTION] == IN:
            listed = obj.get("sessions")
            if isinstance(listed, list):
                ids = set()
                for item in listed:
                    if isinstance(item, dict):
                        sid = self._session_object(item, at)
                        if sid is not None:
                            ids.add(sid)
                self.listings.append((at, frozenset(ids)))
        sid, tid = info.session_id, info.task_id
        if sid is None or tid is None or type_ is None:
            return
        if type_ == "execute_task" and frame[F_DIRECTION] == OUT:
            task = self.task(sid, tid, at)
            payload = obj.get("payload")
            text = payload.get("task") if isinstance(payload, dict) else None
            if isinstance(text, str):
                task.description = text
            task.status = task.status or "requested"
        elif type_ == "task_executing":
            task = self.task(sid, tid, at)
            task.status = "running"
            task.started_at_us = task.started_at_us or at
        elif type_ == "task_completed":
            task = self.task(sid, tid, at)
            task.status = "completed"
            task.ended_at_us = at
        elif type_ == "task_failed":
            task = self.task(sid, tid, at)
            task.status = "failed"
            task.ended_at_us = at
            error = obj.get("error")
            if isinstance(error, str):
                task.error = error
                self.session(sid, at).last_error = error

    def _session_object(self, session: dict[str, Any], at: int) -> str | None:
        sid = _id(session.get("id"))
        if sid is None:
            return None
        delta = self.session(sid, at)
        if (v := _id(session.get("orchestratorId"))) is not None:
            delta.orchestrator_id = v
        if (v := _id(session.get("type"))) is not None:
            delta.session_type = v
        status = _id(session.get("status"))
        if status is not None:
            delta.status = status
        if (t := parse_daemon_time(session.get("startedAt"))) is not None:
            delta.started_at_us = t
        if (t := parse_daemon_time(session.get("endedAt"))) is not None:
            delta.ended_at_us = t
        task = session.get("task")
        if isinstance(task, dict):
            tid = _id(task.get("id"))
            description = task.get("description")
            if isinstance(description, str):
                delta.task_description = description
            if tid is not None:
                delta.task_id = tid
                task_delta = self.task(sid, tid, at)
                if isinstance(description, str):
                    task_delta.description = description
                # The daemon leaves task.status at "pending"; the session's status
                # is the truth about its first task.
                if status in TERMINAL_STATUSES or status == "running":
                    task_delta.status = status
                    if status in TERMINAL_STATUSES and delta.ended_at_us is not None:
                        task_delta.ended_at_us = delta.ended_at_us
                elif isinstance(task.get("status"), str):
                    task_delta.status = _id(task.get("status"))
                if delta.started_at_us is not None and task_delta.started_at_us is None:
                    task_delta.started_at_us = delta.started_at_us
        return sid
