"""Recorded frames made safe to show: for the read side, which prints what a hostile
peer may have sent.

A recording holds frames exactly as they came, and JSON can carry what a reader
chokes on: nesting a thousand deep (Python's parser and encoder recurse), NaN and
1e400 (no JSON encoder may write them), lone surrogates (no UTF-8 writer takes
them), and control characters (a terminal obeys them: ESC sequences clear the
screen or write the clipboard). :func:`read_object` gives an object without the
first three; :func:`for_terminal` a text without the last, :func:`on_one_line` a
name or a label as one line of printable characters, and :func:`one_line` the same
cut to what a terminal can use (a daemon's 10 MB error reply is a line, not 10 MB).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# Deeper containers are shown as a placeholder: no protocol field nests this far.
MAX_DEPTH = 64
DEEPER = "…"


def read_object(data: str | bytes, *, deep: bool = False) -> dict[str, Any] | None:
    """A frame's JSON object, tamed (see the module); None if it is not one. With
    ``deep``, its nesting (at most orjson's 1 024) is left for the caller to
    :func:`tamed` in the part it keeps: taming a whole sessions_list of thousands of
    entries costs several times its parse."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        # What orjson refuses (NaN, 1e400, lone surrogates, nesting past 1024), the
        # json module may read; its non-finite numbers become null.
        try:
            obj = json.loads(data, parse_constant=_null, parse_float=_finite)
        except (ValueError, RecursionError):
            return None
        return tamed(obj) if type(obj) is dict else None
    if type(obj) is not dict:
        return None
    if deep:
        return obj
    # orjson's strings and numbers are safe already; only nesting is left, and it
    # cannot be deeper than the number of brackets (most frames have a handful).
    if isinstance(data, bytes):
        brackets = data.count(b"[") + data.count(b"{")
    else:
        brackets = data.count("[") + data.count("{")
    return tamed(obj) if brackets > MAX_DEPTH else obj


def tamed(value: Any, depth: int = MAX_DEPTH) -> Any:
    """``value`` with containers past ``depth`` replaced, non-finite numbers null, and
    strings encodable."""
    if type(value) is dict:
        if depth <= 0:
            return DEEPER
        return {_text(k): tamed(v, depth - 1) for k, v in value.items()}
    if type(value) is list:
        if depth <= 0:
            return DEEPER
        return [tamed(v, depth - 1) for v in value]
    if type(value) is str:
        return _text(value)
    if type(value) is float and not math.isfinite(value):
        return None
    return value


def for_terminal(text: str) -> str:
    """``text`` with the characters a terminal would obey written out (``\\x1b``):
    control characters but newline and tab, and the bidirectional overrides that
    make text read other than it is."""
    return _OBEYED.sub(_escaped, text)


def on_one_line(text: str) -> str:
    """``text`` as one line of a table, a label or a message: every character that is
    not printable written out, newlines (``\\n``) and terminal controls included."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def one_line(text: str, limit: int, *, say_length: bool = True) -> str:
    """``text`` as :func:`on_one_line` writes it, in about ``limit`` characters at
    most. When cut, it ends saying how long it was, ``… (10,485,760 chars)`` (or
    with ``…`` alone, where a column beside it says so already)."""
    if len(text) <= limit and text.isprintable():
        return text
    shown, used = _escaped_head(text, limit)
    if used == len(text):
        return shown
    note = f"… ({len(text):,} chars)" if say_length else "…"
    return _escaped_head(text, max(limit - len(note), 1))[0] + note


def _escaped_head(text: str, width: int) -> tuple[str, int]:
    """The escaped start of ``text`` that fits in ``width`` characters, and how many
    characters of ``text`` it shows."""
    head = text[:width]
    if head.isprintable():
        return head, len(head)
    parts: list[str] = []
    used = 0
    for c in head:
        piece = c if c.isprintable() else _escape(c)
        if used + len(piece) > width:
            break
        parts.append(piece)
        used += len(piece)
    return "".join(parts), len(parts)


_OBEYED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    return _escape(match.group())


def _escape(c: str) -> str:
    if c == "\n":
        return "\\n"
    code = ord(c)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _text(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _null(_: str) -> None:
    return None


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None
