"""Recordings the report's tests read: link connections opened and closed at chosen
times, each with its script of frames, written by the writer's own code with the
monotonic clock following the received time (so a tool call's duration is known)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.web_recordings import Link, write_links

__all__ = ["Link", "message", "write_timed"]


def message(kind: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode()


def write_timed(db: Path | str, links: Sequence[Link]) -> None:
    """Each link connection with its frames; a frame's monotonic time is its received
    time (in ns), so durations are differences of received times."""
    write_links(db, links, timed=True)
