"""How rows look on a terminal and in files: shared by every command that prints them."""

from __future__ import annotations

import base64
import json
from typing import Any, BinaryIO

from recorder.protocol.frames import IN, OPCODE_TEXT
from recorder.times import format_us

FRAME_TABLE_HEADER = (
    f"{'ID':>8} {'TIME':<27} {'CONN':>4} DIR {'TYPE':<24} {'SESSION':<34} {'SIZE':>7} PAYLOAD"
)
SESSION_TABLE_HEADER = (
    f"{'SESSION':<34} {'STATUS':<10} {'TYPE':<12} {'FRAMES':>7} {'FIRST SEEN':<27} TASK"
)


def session_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "orchestrator_id": row.orchestrator_id,
        "session_type": row.session_type,
        "task_id": row.task_id,
        "task_description": row.task_description,
        "first_seen": format_us(row.first_seen_us),
        "last_seen": format_us(row.last_seen_us),
        "started_at": format_us(row.started_at_us) or None,
        "ended_at": format_us(row.ended_at_us) or None,
        "frame_count": row.frame_count,
        "last_error": row.last_error,
    }


def session_line(row: Any) -> str:
    task = (row.task_description or "").replace("\n", " ")
    return (
        f"{row.id:<34} {row.status or '?':<10} {row.session_type or '':<12} {row.frame_count:>7} "
        f"{format_us(row.first_seen_us):<27} {task[:60]}"
    )


def frame_json(row: Any) -> dict[str, Any]:
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


def frame_text(row: Any) -> str | None:
    """The exact frame text, or None when the frame is binary or not valid UTF-8."""
    if row.payload is not None:
        return str(row.payload)
    if row.opcode == OPCODE_TEXT and row.payload_bytes is not None:
        try:
            return bytes(row.payload_bytes).decode()
        except UnicodeDecodeError:
            return None
    return None


def write_frame_jsonl(out: BinaryIO, row: Any) -> None:
    out.write(json.dumps(frame_json(row), ensure_ascii=False).encode() + b"\n")


def write_frame_line(out: BinaryIO, row: Any) -> None:
    text = frame_text(row)
    preview = (
        text
        if text is not None
        else f"<{row.size} bytes {'binary' if row.opcode != OPCODE_TEXT else 'invalid UTF-8'}>"
    )
    # One line per frame, and no raw control characters on the terminal.
    preview = "".join(
        c if c.isprintable() else ("\\n" if c == "\n" else f"\\x{ord(c):02x}") for c in preview[:80]
    )[:80]
    arrow = "<-" if row.direction == IN else "->"
    line = (
        f"{row.id:>8} {format_us(row.received_at_us):<27} {row.connection_id:>4} {arrow:<3} "
        f"{(row.type or '-')[:24]:<24} {(row.session_id or '-')[:34]:<34} {row.size:>7} {preview}\n"
    )
    out.write(line.encode())
