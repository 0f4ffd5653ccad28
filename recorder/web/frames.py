"""Frames (``/frames``, ``/api/frames``, a frame's payload, the JSONL download) and
a session's frames (``/api/sessions/{id}/frames``). Not built yet."""

from __future__ import annotations

from starlette.routing import Route

from recorder.web.render import Endpoint, Reader


def routes(reads: Reader) -> list[Route]:
    return []


def api(reads: Reader) -> dict[str, Endpoint]:
    """Session JSON by what follows the id: {"frames": ...}."""
    return {}
