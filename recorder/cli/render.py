"""How rows look on a terminal and in files: shared by every command that prints them.

Rows are what the read library returns (:mod:`recorder.db.rows`). Three shapes:
``table`` for people (aligned, one line per row, no raw control characters, each
value cut to what a terminal can use and saying how long it was, the last column
to the terminal's width), ``json`` (one document) and ``jsonl`` (one object per
line), which keep every value whole.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import click

from recorder.db.rows import Connection, Frame, Session, Task
from recorder.protocol.frames import IN, OPCODE_TEXT
from recorder.protocol.tame import one_line
from recorder.times import format_us

Row = Any

# What a person is shown of one value: a column is as wide as its widest cell, and a
# daemon's 10 MB value made every row of a table 10 MB wide. The last column, which
# nothing follows, may be longer, or on a terminal what its width leaves.
CELL_CHARS = 60
VALUE_CHARS = 200
# On a terminal: the least a column is cut to (ids and times are never cut: a
# value's start and how long it was), and what the last one keeps as others give way.
NARROWEST = 32
LAST_CHARS_LEFT = 24
# Entries of a mapping shown on one line (metrics, frames by type).
PAIRS_SHOWN = 20


def terminal_width() -> int | None:
    """The terminal's width when stdout is one; None (no cutting) when piped."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((120, 24)).columns


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Row], Any]
    right: bool = False


def table_lines(columns: Sequence[Column], rows: Iterable[Row], indent: str = "") -> list[str]:
    """Aligned lines, one per row, each value cut short (see the module); on a
    terminal, the widest columns give way until the last one has room too."""
    room = terminal_width()
    room = room - len(indent) if room else None
    values = [[_cell(c.value(row)) for c in columns] for row in rows]
    width = [len(c.header) for c in columns]
    cells: list[list[str]] = [[] for _ in columns]

    def cut(i: int, limit: int) -> None:
        cells[i] = [one_line(v[i], limit) for v in values]
        width[i] = max([len(columns[i].header)] + [len(c) for c in cells[i]])

    for i in range(len(columns) - 1):
        cut(i, CELL_CHARS)
    while room:
        over = sum(width[:-1]) + 2 * (len(columns) - 1) + LAST_CHARS_LEFT - room
        widest = max(range(len(columns) - 1), key=lambda i: width[i], default=None)
        if over <= 0 or widest is None or width[widest] <= NARROWEST:
            break
        cut(widest, max(NARROWEST, width[widest] - over))
    last = len(columns) - 1
    cut(last, max(LAST_CHARS_LEFT, room - sum(width[:-1]) - 2 * last) if room else VALUE_CHARS)
    lines = []
    for texts in [[c.header for c in columns], *zip(*cells, strict=True)]:
        parts = [
            v.rjust(w) if c.right else (v if i == last else v.ljust(w))
            for i, (c, v, w) in enumerate(zip(columns, texts, width, strict=True))
        ]
        line = "  ".join(parts).rstrip()
        lines.append(indent + (line[:room] if room else line))
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return str(value)


def emit(
    rows: Sequence[Row],
    fmt: str,
    columns: Sequence[Column],
    to_json: Callable[[Row], dict[str, Any]],
    what: str,
) -> None:
    """Print ``rows`` in the chosen shape; say on stderr when there are none."""
    if not rows:
        if fmt == "json":
            click.echo("[]")
        click.echo(f"no {what} match", err=True)
        return
    if fmt == "json":
        click.echo(json.dumps([to_json(r) for r in rows], ensure_ascii=False, indent=2))
    elif fmt == "jsonl":
        for row in rows:
            click.echo(json.dumps(to_json(row), ensure_ascii=False))
    else:
        for line in table_lines(columns, rows):
            click.echo(line)


def when(us: int | None) -> str:
    return format_us(us)


def shown(value: Any, limit: int = VALUE_CHARS) -> str:
    """A value as a person is shown it: one line, cut to ``limit``, saying how long."""
    return one_line(_cell(value), limit)


def pairs(mapping: dict[Any, Any], most: int = PAIRS_SHOWN) -> str:
    """``key value, ...`` on one line: the first ``most`` entries, each cut short, and
    how many more there were."""
    items = list(mapping.items())
    text = ", ".join(f"{shown(k, CELL_CHARS)} {shown(v, CELL_CHARS)}" for k, v in items[:most])
    return text + (f", … {len(items) - most:,} more" if len(items) > most else "")


# --- sessions, tasks, connections -------------------------------------------------


def session_json(row: Session) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "orchestrator_id": row.orchestrator_id,
        "session_type": row.session_type,
        "task_id": row.task_id,
        "task_description": row.task_description,
        "first_seen": format_us(row.first_seen_us),
        "last_seen": format_us(row.last_seen_us),
        # The daemon's times, as it said them; "finished" is when the recorder saw the
        # session end, on its own clock (a copy made before migration 0011: absent).
        "started_at": format_us(row.started_at_us) or None,
        "ended_at": format_us(row.ended_at_us) or None,
        "finished": format_us(row.finished_us) or None,
        "frame_count": row.frame_count,
        "last_error": row.last_error,
    }


SESSION_COLUMNS = (
    Column("SESSION", lambda r: r.id),
    Column("STATUS", lambda r: r.status or "?"),
    Column("TYPE", lambda r: r.session_type),
    Column("FRAMES", lambda r: r.frame_count, right=True),
    Column("FIRST SEEN", lambda r: when(r.first_seen_us)),
    Column("TASK", lambda r: r.task_description),
)


def task_json(row: Task) -> dict[str, Any]:
    return {
        "session_id": row.session_id,
        "task_id": row.task_id,
        "description": row.description,
        "status": row.status,
        "first_seen": format_us(row.first_seen_us),
        "last_seen": format_us(row.last_seen_us),
        "started_at": format_us(row.started_at_us) or None,
        "ended_at": format_us(row.ended_at_us) or None,
        "frame_count": row.frame_count,
        "error": row.error,
    }


TASK_COLUMNS = (
    Column("SESSION", lambda r: r.session_id),
    Column("STATUS", lambda r: r.status or "?"),
    Column("FRAMES", lambda r: r.frame_count, right=True),
    Column("STARTED", lambda r: when(r.started_at_us or r.first_seen_us)),
    Column("ENDED", lambda r: when(r.ended_at_us)),
    Column("TASK", lambda r: r.description or r.task_id),
    Column("ERROR", lambda r: r.error),
)


def connection_json(row: Connection) -> dict[str, Any]:
    return {
        "id": row.id,
        "role": row.role,
        "url": row.url,
        "client_addr": row.client_addr,
        "opened_at": format_us(row.opened_at_us),
        "closed_at": format_us(row.closed_at_us) or None,
        "closed_by": row.closed_by,
        "close_code": row.close_code,
        "close_reason": row.close_reason,
        "error": row.error,
        "frame_count": row.frame_count,
    }


CONNECTION_COLUMNS = (
    Column("ID", lambda r: r.id, right=True),
    Column("ROLE", lambda r: r.role),
    Column("UI", lambda r: r.client_addr),
    Column("OPENED", lambda r: when(r.opened_at_us)),
    Column("CLOSED", lambda r: when(r.closed_at_us) or "open"),
    Column("BY", lambda r: r.closed_by),
    Column("CODE", lambda r: r.close_code, right=True),
    Column("FRAMES", lambda r: r.frame_count, right=True),
    Column("URL / ERROR", lambda r: r.error or r.url),
)


# --- frames -------------------------------------------------------------------------

FRAME_TABLE_HEADER = (
    f"{'ID':>8} {'TIME':<27} {'CONN':>4} DIR {'TYPE':<24} {'SESSION':<34} {'SIZE':>7} PAYLOAD"
)


def frame_json(row: Frame) -> dict[str, Any]:
    """The JSONL contract of ``recorder frames --format jsonl``. Keep it stable."""
    out: dict[str, Any] = {
        "id": row.id,
        "connection_id": row.connection_id,
        "seq": row.seq,
        "direction": row.direction,
        "received_at": format_us(row.received_at_us),
        "type": row.type,
        "session_id": row.session_id,
        "task_id": row.task_id,
        "opcode": "text" if row.opcode == OPCODE_TEXT else "binary",
        "size": row.size,
    }
    text = frame_text(row)
    if text is not None:
        out["payload"] = text
    else:
        out["payload_b64"] = base64.b64encode(row.payload_bytes or b"").decode()
    return out


def frame_line(row: Frame) -> bytes:
    """One frame as ``--format json`` and ``jsonl`` write it (without the line's end):
    the console's download writes the same bytes."""
    return json.dumps(frame_json(row), ensure_ascii=False).encode()


def frame_text(row: Frame) -> str | None:
    """The exact frame text, or None when the frame is binary or not valid UTF-8."""
    if row.payload is not None:
        return str(row.payload)
    if row.opcode == OPCODE_TEXT and row.payload_bytes is not None:
        try:
            return bytes(row.payload_bytes).decode()
        except UnicodeDecodeError:
            return None
    return None


class FrameWriter:
    """Writes frames to stdout one by one, in the chosen shape (json is a stream too)."""

    def __init__(self, fmt: str, *, flush_each: bool = False) -> None:
        self.fmt = fmt
        self.flush_each = flush_each
        self.out: BinaryIO = sys.stdout.buffer
        self.count = 0
        # The payload preview takes what the terminal has left after the fixed columns.
        room = terminal_width()
        self.preview = max(20, room - len(FRAME_TABLE_HEADER) + 7) if room else 80

    def write(self, row: Frame) -> None:
        out = self.out
        if self.count == 0:
            if self.fmt == "table":
                out.write(FRAME_TABLE_HEADER.encode() + b"\n")
            elif self.fmt == "json":
                out.write(b"[\n")
        elif self.fmt == "json":
            out.write(b",\n")
        self.count += 1
        if self.fmt == "table":
            out.write(self._line(row).encode())
        else:
            line = frame_line(row)
            out.write(line if self.fmt == "json" else line + b"\n")
        if self.flush_each:
            out.flush()

    def finish(self, what: str = "frames") -> None:
        if self.fmt == "json":
            self.out.write(b"\n]\n" if self.count else b"[]\n")
        self.out.flush()
        if not self.count:
            click.echo(f"no {what} match", err=True)

    def _line(self, row: Frame) -> str:
        text = frame_text(row)
        if text is None:
            kind = "binary" if row.opcode != OPCODE_TEXT else "invalid UTF-8"
            text = f"<{row.size} bytes {kind}>"
        # SIZE says how long each one is.
        preview = one_line(text[: self.preview + 1], self.preview, say_length=False)
        arrow = "<-" if row.direction == IN else "->"
        kind = one_line(row.type or "-", 24, say_length=False)
        session = one_line(row.session_id or "-", 34, say_length=False)
        return (
            f"{row.id:>8} {format_us(row.received_at_us):<27} {row.connection_id:>4} "
            f"{arrow:<3} {kind:<24} {session:<34} {row.size:>7} {preview}\n"
        )
