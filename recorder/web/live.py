"""Frames as they are committed (``/live`` and its event stream). Not built yet."""

from __future__ import annotations

from starlette.routing import Route

from recorder.web.render import Reader


def routes(reads: Reader) -> list[Route]:
    return []
