"""What a cue looks like when played as text: output, or a marked line. Pure.

Stream chunks are the session's output, written as they arrived; everything
else (what the UI asked, tool calls, status changes, task events, errors, gaps) is
a marker: a line of its own, so the text between markers reads as the model wrote
it. What a frame says is shown as text, never obeyed: a task text is quoted as JSON
quotes it, and every marker is one line of printable characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from recorder.protocol.frames import OUT
from recorder.protocol.tame import for_terminal, on_one_line, read_object
from recorder.replay.plan import Cue


@dataclass(frozen=True)
class Shown:
    """Text to write (``output``), or a marker line (``kind`` and ``label``)."""

    output: str = ""
    kind: str = ""
    label: str = ""

    @property
    def is_marker(self) -> bool:
        return bool(self.kind)


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _object(cue: Cue) -> dict[str, Any] | None:
    frame = cue.frame
    if frame is None or not frame.is_text:
        return None
    return read_object(frame.data)


def show(cue: Cue) -> Shown | None:
    """How a cue is shown, or None for frames that have nothing to show.

    What the frame says is written out where a terminal would obey it (escape
    sequences can clear the screen or set the clipboard); markers stay one line."""
    shown = _shown(cue)
    if shown is None:
        return None
    return Shown(
        output=for_terminal(shown.output),
        kind=on_one_line(shown.kind),
        label=on_one_line(shown.label),
    )


def duration(seconds: float) -> str:
    """``seconds`` as written in a marker: exact, and past two minutes also in the
    units a person reads (``29210541.0 s (338 d 2 h)``)."""
    exact = f"{seconds:.1f} s"
    if seconds < 120:
        return exact
    units = (("d", 86_400), ("h", 3600), ("min", 60), ("s", 1))
    left = int(seconds)
    at = next(i for i, (_, size) in enumerate(units) if left >= size)
    (big, big_size), (small, small_size) = units[at], units[at + 1]
    shown = f"{left // big_size} {big}"
    if left % big_size >= small_size:
        shown += f" {left % big_size // small_size} {small}"
    return f"{exact} ({shown})"


def _gap(cue: Cue) -> Shown:
    assert cue.gap is not None
    label = f"{duration(cue.gap.seconds)} with no recording connection"
    if cue.edge == "before":
        label += ", before the first frame played (not waited)"
    elif cue.edge == "after":
        label += ", after the last frame played (not waited)"
    return Shown(kind="gap", label=label)


def _asked(obj: dict[str, Any] | None, frame_type: str | None, size: int) -> Shown:
    """A request the UI sent: its type, and the task text it carried, quoted."""
    if obj is None:
        return Shown(kind="asked", label=f"{frame_type or 'not JSON'}, {size} bytes")
    payload = obj.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    task = payload.get("task")
    if isinstance(task, dict):  # spawn_session carries the task as an object
        task = task.get("description")
    label = _short(str(obj.get("type")), 80)
    if isinstance(task, str):
        task = task[:200]  # a marker is cut at 160: a long text is not quoted whole
    if task is not None:
        label += ": " + _short(json.dumps(task, ensure_ascii=False))
    return Shown(kind="asked", label=label)


def _shown(cue: Cue) -> Shown | None:
    if cue.gap is not None:
        return _gap(cue)
    frame = cue.frame
    assert frame is not None
    obj = _object(cue)
    if frame.direction == OUT:
        return _asked(obj, frame.type, len(frame.data))
    if obj is None:
        return Shown(kind="frame", label=f"{frame.type or 'not JSON'}, {len(frame.data)} bytes")
    kind = frame.type or ""
    data: dict[str, Any] = obj["data"] if isinstance(obj.get("data"), dict) else {}
    if kind == "stream_chunk":
        chunk = data.get("chunk")
        return Shown(output=chunk) if isinstance(chunk, str) else None
    if kind == "stream_compacted":
        text = data.get("text")
        return Shown(output=text) if isinstance(text, str) else None
    if kind in ("stream_start", "stream_end"):
        return None
    if kind == "tool_call_start":
        name = _short(str(data.get("toolName")), 80)
        return Shown(kind="tool", label=f"{name} {_short(data.get('toolInput'))}")
    if kind == "tool_call_result":
        result = data.get("result")
        error = result.get("error") if isinstance(result, dict) else None
        outcome = (
            f"failed: {_short(error)}"
            if error is not None
            else _short(str(data.get("status", "done")))
        )
        return Shown(kind="tool", label=f"{_short(str(data.get('toolName')), 80)} {outcome}")
    if kind in ("session_status_update", "session_spawned"):
        session = obj.get("session")
        status = session.get("status") if isinstance(session, dict) else None
        label = _short(str(status), 80) + (" (spawned)" if kind == "session_spawned" else "")
        return Shown(kind="status", label=label)
    if kind.startswith("task_"):
        label = f"{kind[5:]}: {_short(obj.get('taskId'))}"
        if isinstance(obj.get("error"), str):
            label += f": {_short(obj['error'])}"
        return Shown(kind="task", label=label)
    if kind == "error":
        return Shown(kind="error", label=_short(obj.get("error")))
    return Shown(kind=kind or "frame", label=_short(obj, 120))
