"""A replay as a file: asciicast v2 (plays with ``asciinema play``) or JSONL frames."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import IO, Any

from recorder.protocol.tame import on_one_line
from recorder.replay.plan import Cue
from recorder.replay.text import show


def asciicast(
    timed: Iterable[tuple[float, Cue]],
    out: IO[str],
    *,
    title: str,
    started_us: int,
    idle_time_limit: float | None,
    width: int = 100,
    height: int = 30,
) -> int:
    """Write an asciicast v2 file: a header line, then ``[time, code, data]`` events
    with times that never decrease. Stream text is output (``o``, with CRLF line
    ends, as a terminal expects); what the UI asked, tool calls, status changes, task
    events, errors and gaps are markers (``m``) and also lines of output, so they show
    when played."""
    header: dict[str, Any] = {
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": started_us // 1_000_000,
        "title": on_one_line(title),  # a player may print it
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"},
    }
    if idle_time_limit is not None:
        header["idle_time_limit"] = idle_time_limit
    out.write(json.dumps(header) + "\n")
    events = 0
    at_line_start = True
    for at, cue in timed:
        shown = show(cue)
        if shown is None:
            continue
        t = round(at, 6)
        if shown.is_marker:
            label = f"{shown.kind}: {shown.label}"
            out.write(json.dumps([t, "m", label], ensure_ascii=False) + "\n")
            text = (
                "" if at_line_start else "\r\n"
            ) + f"\x1b[2m[{shown.kind}] {shown.label}\x1b[0m\r\n"
            at_line_start = True
            events += 1
        else:
            text = shown.output.replace("\r\n", "\n").replace("\n", "\r\n")
            if text:
                at_line_start = text.endswith("\n")
        if text:
            out.write(json.dumps([t, "o", text], ensure_ascii=False) + "\n")
            events += 1
    return events
