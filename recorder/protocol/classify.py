"""Classify a frame: its type, session and task ids, and whether it is a JSON object.

Runs once per frame in the classifier process, so it is written for speed: orjson
first, the json module only for what orjson refuses.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import orjson

# An id longer than this is garbage, not an id: keep it out of the indexed columns.
MAX_ID_LENGTH = 256


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
    type_ = id_or_none(obj.get("type"))
    session_id, task_id = extract_ids(obj, type_)
    return Classified(type_, session_id, task_id, None, text, obj)


def id_or_none(value: Any) -> str | None:
    """``value`` if it is an id the index can keep: a short string a column can hold."""
    # storable(), inlined for the common case: this runs for several fields a frame.
    if (
        type(value) is str
        and 0 < len(value) <= MAX_ID_LENGTH
        and "\x00" not in value
        and (value.isascii() or storable(value))
    ):
        return value
    return None


def text_or_none(value: Any) -> str | None:
    """``value`` if it is a string a column can hold (a description, an error)."""
    return value if type(value) is str and storable(value) else None


# The daemon's answer to a request about a session it does not know names it:
# "Session not found: session_x".
NOT_FOUND = "Session not found: "


def not_found_session(error: str) -> str | None:
    """The session a daemon's "Session not found: <id>" error names, if it is one."""
    if not error.startswith(NOT_FOUND):
        return None
    return id_or_none(error[len(NOT_FOUND) :])


def storable(text: str) -> bool:
    """Whether a text column can hold ``text``. JSON can spell what neither database
    takes: ``\\u0000`` (PostgreSQL's text has no NUL) and a lone ``\\ud800`` (no
    driver encodes a surrogate). One such string in a batch would fail its every
    retry and stop the recording; the frame itself is kept byte-exact either way."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def extract_ids(obj: dict[str, Any], type_: str | None) -> tuple[str | None, str | None]:
    """Session and task id from wherever the protocol puts them.

    Top level (``sessionId``/``taskId``: task_* frames), ``payload`` (client
    requests), ``data`` (stream and tool frames), ``session`` (session_spawned,
    session_status_update: ``session.id`` and ``session.task.id``); the first
    place that has one wins. Runs for every frame, hence the plain lookups.
    """
    get = obj.get
    session_id = id_or_none(get("sessionId"))
    task_id = id_or_none(get("taskId"))
    if session_id is not None and task_id is not None:
        return session_id, task_id
    for key in ("payload", "data"):
        inner = get(key)
        if type(inner) is dict:
            if session_id is None:
                session_id = id_or_none(inner.get("sessionId"))
            if task_id is None:
                task_id = id_or_none(inner.get("taskId"))
                if task_id is None and type_ == "execute_task":
                    # Real daemons name the task by the text the client sent.
                    task_id = id_or_none(inner.get("task"))
    session = get("session")
    if type(session) is dict:
        if session_id is None:
            session_id = id_or_none(session.get("id"))
        task = session.get("task")
        if task_id is None and type(task) is dict:
            task_id = id_or_none(task.get("id"))
    return session_id, task_id
